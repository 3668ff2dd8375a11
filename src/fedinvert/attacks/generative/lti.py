"""LTI — learning to invert (Wu, Chen, Liu, Lin, "Learning to Invert: Simple Adaptive Attacks for Gradient
Inversion in Federated Learning", 2023): train a network that maps a gradient to its batch of images on
auxiliary data, then invert the observed gradient in one forward pass.

The inversion model is specific to the observed victim: for each auxiliary batch the attack computes the
victim's gradient at the weights the server sent, compresses it with a fixed random count sketch (every
coordinate added, with a random sign, to one of ``sketch`` buckets; memory O(parameters)), and trains an MLP
from the sketch to the batch's images (MSE, images of a batch ordered by label, so the target is defined
although the gradient does not depend on the order). Trained weights are cached under a hash of everything
that determines them, so a second attack on the same round costs one forward pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from fedinvert.attacks.base import ATTACKS, Attack, batch_size_of
from fedinvert.attacks.labels import infer_labels
from fedinvert.cache import cache_root, save_tensors
from fedinvert.errors import CheckpointError, ConfigError, ObservationError
from fedinvert.observation import Observation, Reconstruction

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where trained inversion models are kept: ``$FEDINVERT_CACHE/lti`` (default ``~/.cache/fedinvert/lti``)."""
    return cache_root() / "lti"


class CountSketch:
    """A fixed random linear map of a D-vector to ``size`` buckets: y[h(i)] += s(i)·x[i] (seeded)."""

    def __init__(self, dim: int, size: int, *, seed: int = 0, device: torch.device | str = "cpu") -> None:
        rng = np.random.default_rng(seed)
        self.size = size
        self.bucket = torch.from_numpy(rng.integers(0, size, dim)).to(device)
        self.sign = torch.from_numpy(rng.choice([-1.0, 1.0], dim).astype(np.float32)).to(device)

    def __call__(self, vectors: Tensor) -> Tensor:
        """(N, D) → (N, size)."""
        out = vectors.new_zeros(vectors.shape[0], self.size)
        return out.index_add_(1, self.bucket, vectors * self.sign)


class InversionNet(nn.Module):
    """Sketch (N, P) → images (N, B, C, H, W) in [0, 1]: an MLP with two hidden layers and a sigmoid."""

    def __init__(self, inputs: int, hidden: int, batch: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = (batch, *image_shape)
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, math.prod(self.shape)),
        )

    def forward(self, sketch: Tensor) -> Tensor:
        return torch.sigmoid(self.net(sketch)).view(-1, *self.shape)


@ATTACKS.register("lti")
class LTI(Attack):
    """Learning to invert: an MLP trained on auxiliary batches maps the observed gradient to its images.

    Args:
        aux: the auxiliary data set (registry name; ``fashion-mnist`` by default), resized to the observed
            image shape; its labels taken modulo the victim's classes when it has more.
        aux_split: its split (None: the split other than the data set's default one — the public split of a
            run whose private batch comes from the default split, as the no-leak reference's; a one-split data
            set's only split).
        aux_batches: auxiliary batches to train on (2000); each holds B distinct-position images.
        aux_root: folder of a ``folder`` aux data set.
        sketch: buckets of the gradient sketch (2048); 0 uses the full gradient.
        hidden: width of the MLP's two hidden layers (1000).
        epochs: passes over the auxiliary batches (30); lr: Adam learning rate (1e-3); train_batch: sketches
            per Adam step (64).
        labels: label inference for the returned labels (`auto`, ...).
        seed: seed of the auxiliary sample, the sketch and the MLP's initialisation.
        cache: reuse and store trained inversion models (`cache_dir`).
    """

    def __init__(
        self,
        *,
        aux: str = "fashion-mnist",
        aux_split: str | None = None,
        aux_batches: int = 2000,
        aux_root: str | None = None,
        sketch: int = 2048,
        hidden: int = 1000,
        epochs: int = 30,
        lr: float = 1e-3,
        train_batch: int = 64,
        labels: str = "auto",
        seed: int = 0,
        cache: bool = True,
        device: str | torch.device = "auto",
        log_every: int = 50,
    ) -> None:
        super().__init__(device=device, log_every=log_every)
        for key, value, low in (("aux_batches", aux_batches, 1), ("sketch", sketch, 0), ("hidden", hidden, 1),
                                ("epochs", epochs, 1), ("train_batch", train_batch, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"attack.{key} must be an integer ≥ {low}, got {value!r}")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"attack.lr must be a positive number, got {lr!r}")
        if not isinstance(aux, str) or not aux:
            raise ConfigError(f"attack.aux must name a data set, got {aux!r}")
        self.aux, self.aux_split, self.aux_root = aux, aux_split, aux_root
        self.aux_batches, self.sketch, self.hidden = int(aux_batches), int(sketch), int(hidden)
        self.epochs, self.lr, self.train_batch = int(epochs), float(lr), int(train_batch)
        self.labels, self.seed, self.cache = labels, int(seed), bool(cache)

    # -- auxiliary data ----------------------------------------------------------------------------
    def auxiliary(self, obs: Observation, batch: int) -> tuple[Tensor, Tensor]:
        """(aux_batches, B, C, H, W) images in [0, 1] and (aux_batches, B) labels, each batch ordered by label."""
        from fedinvert.data.loader import _at_run_shape, build_dataset

        channels, size, _ = obs.image_shape
        data = build_dataset(self.aux, root=self.aux_root, image_size=size, channels=channels)
        split = self.aux_split
        if split is None:
            split = next((s for s in data.splits if s != data.default_split), data.default_split)
        split = data.resolve_split(split)
        available = data.size(split=split)
        need = self.aux_batches * batch
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(available, size=need, replace=need > available)
        taken = data.take(chosen.tolist(), split=split)
        images = _at_run_shape(taken.images, self.aux, image_size=size, channels=channels)
        if tuple(images.shape[1:]) != tuple(obs.image_shape):
            raise ConfigError(f"attack.aux '{self.aux}' gives images of shape {tuple(images.shape[1:])}, the"
                              f" observation's are {tuple(obs.image_shape)}")
        labels = (taken.labels % obs.num_classes).view(self.aux_batches, batch)
        images = images.view(self.aux_batches, batch, *obs.image_shape)
        order = torch.argsort(labels, dim=1, stable=True)
        labels = torch.gather(labels, 1, order)
        images = images[torch.arange(self.aux_batches)[:, None], order]
        return images, labels

    def gradients(self, obs: Observation, images: Tensor, labels: Tensor, chunk: int = 256) -> Tensor:
        """The victim's flattened gradient of each batch: (N, D), computed in chunks with `torch.func`."""
        import copy

        model = copy.deepcopy(obs.model).to(self.device)
        if model.training:  # batch statistics, as the client computed them, without updating running buffers
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.running_mean = module.running_var = module.num_batches_tracked = None
        names = obs.parameter_names
        params = {n: p.detach() for n, p in model.named_parameters()}
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        mean, std = obs.mean_std(self.device)

        def loss(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            out = torch.func.functional_call(model, ({**params, **theta}, buffers), ((x - mean) / std,))
            return F.cross_entropy(out, y)

        grad = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
        theta = {n: params[n] for n in names}
        rows = []
        for start in range(0, len(images), chunk):
            g = grad(theta, images[start : start + chunk].to(self.device), labels[start : start + chunk].to(self.device))
            rows.append(torch.cat([g[n].flatten(1) for n in names], dim=1))
        return torch.cat(rows)

    # -- the inversion model -------------------------------------------------------------------------
    def cache_key(self, obs: Observation, batch: int) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(obs.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        settings = {"aux": self.aux, "aux_split": self.aux_split, "aux_root": self.aux_root,
                    "aux_batches": self.aux_batches, "sketch": self.sketch, "hidden": self.hidden,
                    "epochs": self.epochs, "lr": self.lr, "train_batch": self.train_batch, "seed": self.seed,
                    "batch": batch, "shape": list(obs.image_shape), "normalization": obs.normalization,
                    "training": obs.model.training, "version": 1}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()[:24]

    def train(self, obs: Observation, batch: int, project: Any, progress: bool) -> tuple[InversionNet, dict[str, Any]]:
        from tqdm.auto import tqdm

        images, labels = self.auxiliary(obs, batch)
        with torch.no_grad():
            features = project(self.gradients(obs, images, labels))
        scale = features.norm(dim=1).mean().clamp_min(1e-12)
        features = features / scale
        torch.manual_seed(self.seed)
        net = InversionNet(features.shape[1], self.hidden, batch, obs.image_shape).to(self.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
        targets = images.to(self.device)
        shuffle = torch.Generator().manual_seed(self.seed)
        losses = []
        for _ in tqdm(range(self.epochs), desc="LTI training", disable=not progress, leave=False):
            order = torch.randperm(len(features), generator=shuffle)
            total = 0.0
            for start in range(0, len(order), self.train_batch):
                idx = order[start : start + self.train_batch]
                loss = F.mse_loss(net(features[idx]), targets[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(order))
        return net, {"scale": float(scale), "train_mse": losses[-1], "first_mse": losses[0]}

    def reconstruct(
        self, obs: Observation, *, rng: torch.Generator | None = None, progress: bool = False
    ) -> Reconstruction:
        if obs.kind != "gradient":
            raise ObservationError("attack 'lti' inverts FedSGD gradients; this observation is a FedAvg weight delta")
        batch = batch_size_of(obs)
        rec_labels = infer_labels(obs, method=self.labels, batch_size=batch)
        dim = sum(obs.update[n].numel() for n in obs.parameter_names)
        sketcher = CountSketch(dim, self.sketch, seed=self.seed, device=self.device) if self.sketch else None

        def project(vectors: Tensor) -> Tensor:
            return vectors if sketcher is None else sketcher(vectors)

        key = self.cache_key(obs, batch)
        path = cache_dir() / f"{key}.safetensors"
        info: dict[str, Any]
        inputs = self.sketch or dim
        net = InversionNet(inputs, self.hidden, batch, obs.image_shape).to(self.device)
        if self.cache and path.is_file():
            try:
                stored = load_file(str(path))
                scale = float(stored.pop("__scale__").item())
                net.load_state_dict(stored)
            except (OSError, RuntimeError, KeyError, ValueError) as err:
                raise CheckpointError(f"{path} is not a usable LTI cache entry ({err}); delete it to retrain") from None
            info = {"scale": scale, "cached": True}
        else:
            net, info = self.train(obs, batch, project, progress)
            info["cached"] = False
            if self.cache:
                state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
                state["__scale__"] = torch.tensor(info["scale"])
                save_tensors(path, state)
        observed = torch.cat([obs.update[n].detach().to(self.device).flatten() for n in obs.parameter_names])[None]
        with torch.no_grad():
            images = net(project(observed) / info["scale"])[0].clamp(0, 1).cpu()
            # the answer's own gradient distance (cosine), as the other attacks report theirs
            again = self.gradients(obs, images[None], rec_labels.view(1, -1).cpu())
            score = float(1 - F.cosine_similarity(again, observed.to(again.device)).item())
        evaluations = (0 if info["cached"] else self.aux_batches) + 1
        return Reconstruction(
            images=images, labels=rec_labels.cpu(), score=score, history=[], iterations=evaluations,
            extras={"cache_key": key, **info, "aux": self.aux, "aux_batches": self.aux_batches},
        )
