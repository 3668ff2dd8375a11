"""Trained victims: the victim's weights from a checkpoint (``model.checkpoint``) and/or trained on the data
set's train split before the federated round (``model.pretrain_epochs``, ``model.pretrain_images``).

A freshly initialised victim is the easiest case for gradient inversion; a victim that has learnt the task is
what a real federation attacks. Training follows one fixed, documented recipe (`TRAINING`): Adam with learning
rate 1e-3, mini-batches of 64, cross-entropy with mean reduction, the images prepared exactly as the client
prepares its batch (the run's image size and channels, ``dataset.label_map``, the run's normalisation). The
images are the whole train split, or a seeded sample of ``pretrain_images`` of them; both the sample and the
per-epoch shuffling come from the run's ``pretrain`` seed stream, so the private batch (``data``) and the
initialisation (``model``) are the same with and without pretraining.

Trained weights are cached as ``$FEDINVERT_CACHE/victims/<sha256>.safetensors`` (default
``~/.cache/fedinvert/victims``), keyed by everything that determines them (`cache_key`): the architecture and
its options, the input shape and class count, the starting weights (which covers the seed and a checkpoint),
the data set, its root, label map and normalisation, the epochs, the image cap, the seed, the recipe and the
device type. A second run with the same settings loads the file and trains nothing. The cache does not notice a
data set's files being replaced under the same root; delete the entry (or the folder) then.

With both keys the checkpoint is loaded first and then trained for ``pretrain_epochs`` epochs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from fedinvert import determinism
from fedinvert.cache import cache_root, save_tensors
from fedinvert.data.base import DATASETS, Dataset
from fedinvert.data.loader import _at_run_shape, build_dataset
from fedinvert.errors import CheckpointError, ConfigError
from fedinvert.seeding import generator, numpy_rng

log = logging.getLogger(__name__)

TRAINING: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "loss": "cross_entropy"}
"""The pretraining recipe: Adam (default betas), learning rate 1e-3, mini-batches of 64 images (the last one
smaller), cross-entropy with mean reduction; recorded in run.json and part of the cache key."""

TEST_IMAGES = 500
"""The victim's test accuracy is measured on the first this many images of the test split (file order)."""

STREAM = "pretrain"
"""The seed stream (`fedinvert.seeding`) of the training sample and the per-epoch shuffling."""

CACHE_FORMAT = 1
"""Version of the cache entries' layout; part of the key, so a new layout never reads an old entry."""

_META_KEY = "fedinvert_victim"


def cache_dir() -> Path:
    """Where trained victims are kept: ``$FEDINVERT_CACHE/victims`` (default ``~/.cache/fedinvert/victims``)."""
    return cache_root() / "victims"


@dataclass(frozen=True)
class TrainingData:
    """The data set the victim learns from, prepared as the client prepares its private batch.

    Attributes:
        dataset: registry name; it must have a ``train`` split (and a ``test`` split for the accuracy).
        root: ``dataset.root`` of the run, or None.
        image_size: the run's ``image_size`` (None: the data set's native size).
        channels: the run's ``channels`` (None: the data set's own).
        num_classes: the run's ``num_classes`` as given (None: the data set's), for `build_dataset`.
        label_map: ``dataset.label_map`` (entry c is the FL label of class c), or None.
        normalization: (mean, std) per channel that the client applies to [0, 1] images.
    """

    dataset: str
    root: str | None
    image_size: int | None
    channels: int | None
    num_classes: int | None
    label_map: list[int] | None
    normalization: tuple[tuple[float, ...], tuple[float, ...]]

    def open(self) -> Dataset:
        return build_dataset(self.dataset, root=self.root, image_size=self.image_size, channels=self.channels,
                             num_classes=self.num_classes)

    def batch(self, source: Dataset, indices: np.ndarray, split: str) -> tuple[Tensor, Tensor]:
        """The victim's inputs (N, C, H, W), normalised, and the FL labels (N,) of ``indices`` of ``split``."""
        taken = source.take(indices, split=split)
        images = _at_run_shape(taken.images, self.dataset, image_size=self.image_size, channels=self.channels)
        mean = torch.tensor(self.normalization[0]).view(1, -1, 1, 1)
        std = torch.tensor(self.normalization[1]).view(1, -1, 1, 1)
        labels = taken.labels
        if self.label_map is not None:
            labels = torch.tensor(self.label_map, dtype=labels.dtype)[labels]
        return (images - mean) / std, labels

    def describe(self) -> dict[str, Any]:
        """Plain data for the cache key and run.json."""
        return {
            "dataset": self.dataset,
            "root": None if self.root is None else str(Path(self.root).expanduser().resolve()),
            "image_size": self.image_size,
            "channels": self.channels,
            "label_map": self.label_map,
            "normalization": {"mean": list(self.normalization[0]), "std": list(self.normalization[1])},
        }


def state_digest(model: nn.Module) -> str:
    """SHA-256 of ``model``'s state dict (names, dtypes, shapes and bytes, in state-dict order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(material: dict[str, Any]) -> str:
    """SHA-256 hex digest of the key ``material`` (plain data, serialised as sorted JSON)."""
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def read_safetensors(path: Path, *, problem: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the metadata of the safetensors file ``path``.

    Raises:
        CheckpointError: ``"<problem> (<the reader's reason>)"`` when the file cannot be read as safetensors.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{problem} ({reason})") from None
    return state, meta


def load_weights(model: nn.Module, path: Path, *, name: str, what: str) -> dict[str, str]:
    """Load the state dict in the safetensors file ``path`` into ``model`` (strictly); return the file's metadata.

    Raises:
        CheckpointError: the file is not safetensors, holds NaN/inf, lacks a key of ``model``'s state dict, has
            one it does not, or a tensor of another shape; the message names ``what``, ``path`` and the first
            bad key (state-dict order).
    """
    state, meta = read_safetensors(path, problem=f"{what} {path} is not a readable safetensors file")
    expected = model.state_dict()
    lead = f"{what} {path} does not fit the victim '{name}'"
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{lead}: it has no tensor {missing[0]!r} ({len(missing)} of {len(expected)} missing)")
    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        raise CheckpointError(f"{lead}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected)")
    for key, target in expected.items():
        if tuple(state[key].shape) != tuple(target.shape):
            raise CheckpointError(
                f"{lead}: {key!r} has shape {tuple(state[key].shape)}, the victim's is {tuple(target.shape)}"
            )
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise CheckpointError(f"{what} {path}: tensor {key!r} holds NaN or inf")
    model.load_state_dict(state, strict=True)
    return meta


def _train(
    model: nn.Module, data: TrainingData, source: Dataset, chosen: np.ndarray, *, epochs: int, seed: int,
    device: torch.device, progress: bool,
) -> list[float]:
    """``epochs`` epochs of `TRAINING` on ``chosen`` (indices of the train split); the mean loss per epoch."""
    from tqdm.auto import tqdm

    batch = int(TRAINING["batch_size"])
    shuffle = generator(seed, STREAM)
    steps = -(-len(chosen) // batch)
    losses = []
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=float(TRAINING["lr"]))
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    # own RNG state and, on CUDA, deterministic kernels; the caller's random state is left as it was
    with torch.random.fork_rng(devices=cuda), determinism.policy(device, seed=seed), tqdm(
        total=epochs * steps, desc="pretraining victim", unit="batch", disable=not progress, leave=False
    ) as bar:
        for _ in range(epochs):
            order = chosen[torch.randperm(len(chosen), generator=shuffle).numpy()]
            total = torch.zeros((), device=device)
            for start in range(0, len(order), batch):
                inputs, labels = data.batch(source, order[start : start + batch], "train")
                inputs, labels = inputs.to(device), labels.to(device)
                loss = F.cross_entropy(model(inputs), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(labels)
                bar.update()
            losses.append(float(total) / len(order))  # one host sync per epoch
    model.to("cpu")
    return losses


def victim_accuracy(model: nn.Module, data: TrainingData, source: Dataset, *, num_classes: int) -> dict[str, Any]:
    """Top-1 accuracy of ``model`` (in eval mode, on the CPU) on the first `TEST_IMAGES` of the test split."""
    count = min(TEST_IMAGES, source.size(split="test"))
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, count, 250):
            inputs, labels = data.batch(source, np.arange(start, min(start + 250, count)), "test")
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
    model.train(was_training)
    return {"test_accuracy": correct / count if count else None, "test_images": count,
            "chance": 1.0 / num_classes}


def _sample(source: Dataset, images: int | None, seed: int) -> tuple[np.ndarray, int]:
    """The training indices (ascending: a seeded sample of ``images``, or all) and the train split's size."""
    labels = source.labels(split="train")
    available = len(labels)
    chosen = np.arange(available, dtype=np.int64)
    if images is not None and images < available:
        chosen = np.sort(numpy_rng(seed, STREAM).choice(available, size=images, replace=False)).astype(np.int64)
    return chosen, available


def prepare_victim(
    model: nn.Module,
    *,
    name: str,
    options: dict[str, Any],
    num_classes: int,
    data: TrainingData,
    seed: int,
    device: torch.device,
    checkpoint: str | None = None,
    epochs: int = 0,
    images: int | None = None,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Give ``model`` its weights: ``checkpoint``'s, then ``epochs`` epochs of training (or its cached result).

    Args:
        model: the victim as `fedinvert.models.build_model` made it (on the CPU); changed in place, returned to
            its training mode on the CPU.
        name, options: its registry name and options (part of the cache key).
        num_classes: its class count; every training label (after the label map) must be below it.
        data: the data set and how its images are prepared.
        seed: the run's seed (the ``pretrain`` stream is derived from it).
        device: where to train; its type is part of the cache key.
        checkpoint: a safetensors state dict of the same architecture, or None.
        epochs: training epochs ≥ 0 (0: no training).
        images: train on a seeded sample of this many train-split images (None: all of them).
        progress: a tqdm bar over the training steps.

    Returns:
        The record for run.json (None when neither a checkpoint nor training was asked for): ``checkpoint``,
        and for training ``pretrain`` (epochs, images, recipe, device, cache file, ``cache`` = hit or miss, mean
        loss per epoch) and ``test_accuracy`` on `TEST_IMAGES` test images with ``chance``.

    Raises:
        CheckpointError: the checkpoint or the cache entry cannot be read or does not fit the victim.
        ConfigError: a training label is outside the victim's classes.
    """
    if checkpoint is None and epochs == 0:
        return None
    record: dict[str, Any] = {"checkpoint": None}
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        load_weights(model, path, name=name, what="model.checkpoint")
        record["checkpoint"] = str(path)
    source = data.open() if epochs > 0 or "train" in type_splits(data.dataset) else None
    if epochs == 0:
        if source is not None:  # a labelled data set with a test split: how good is the loaded victim
            record.update(victim_accuracy(model, data, source, num_classes=num_classes))
        return record
    assert source is not None
    chosen, available = _sample(source, images, seed)
    material = {
        "format": CACHE_FORMAT, "model": name, "options": options, "num_classes": num_classes,
        "initial_weights": state_digest(model), "data": data.describe(), "epochs": epochs,
        "images": None if len(chosen) == available else len(chosen), "seed": seed, "training": TRAINING,
        "device": device.type,
    }
    path = cache_dir() / f"{cache_key(material)}.safetensors"
    pretrain = {"epochs": epochs, "images": len(chosen), "available": available, "split": "train",
                **TRAINING, "seed_stream": STREAM, "device": device.type, "cache_file": str(path)}
    if path.is_file():
        saved = _load_cached(model, path, name=name)
        log.info("trained victim loaded from the cache: %s", path)
        record["pretrain"] = {**pretrain, "cache": "hit", "losses": saved.get("losses"), "seconds": saved.get("seconds")}
        record.update({k: saved.get(k) for k in ("test_accuracy", "test_images", "chance")})
        return record
    _check_labels(source, chosen, data.label_map, num_classes)
    log.info("training the victim %s for %d epoch(s) on %d %s train images", name, epochs, len(chosen), data.dataset)
    was_training = model.training
    t0 = time.perf_counter()
    losses = _train(model, data, source, chosen, epochs=epochs, seed=seed, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    accuracy = victim_accuracy(model, data, source, num_classes=num_classes)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    entry = {"key": material, "losses": losses, "seconds": seconds, **accuracy}
    save_tensors(path, state, {_META_KEY: json.dumps(entry)})
    record["pretrain"] = {**pretrain, "cache": "miss", "losses": losses, "seconds": seconds}
    record.update(accuracy)
    return record


def _load_cached(model: nn.Module, path: Path, *, name: str) -> dict[str, Any]:
    """Load the cache entry ``path`` into ``model``; its record (losses, seconds, accuracy) from the metadata."""
    stored = load_weights(model, path, name=name, what="cached trained victim").get(_META_KEY)
    try:
        saved = json.loads(stored) if stored else {}
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict):
        raise CheckpointError(f"cached trained victim {path}: its metadata is not a JSON record; delete the file")
    return saved


def _check_labels(source: Dataset, chosen: np.ndarray, label_map: list[int] | None, num_classes: int) -> None:
    """ConfigError when a training label (after ``label_map``) is outside the victim's ``num_classes``."""
    labels = np.asarray(source.labels(split="train"))[chosen]
    if label_map is not None:
        labels = np.asarray(label_map)[labels]
    if len(labels) and int(labels.max()) >= num_classes:
        raise ConfigError(
            f"model.pretrain_epochs: the train split has label {int(labels.max())}, but the victim has"
            f" {num_classes} classes; set num_classes or dataset.label_map to cover it"
        )


def type_splits(dataset: str) -> tuple[str, ...]:
    """The splits the data set registered as ``dataset`` declares (its class's ``splits``)."""
    return tuple(getattr(DATASETS.get(dataset), "splits", ()))


def training_datasets() -> list[str]:
    """The registered data sets with a ``train`` split: those a victim can be pretrained on."""
    return sorted(name for name in DATASETS.names() if "train" in type_splits(name))
