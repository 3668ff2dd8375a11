"""Training of the ``fashion`` prior: a class-conditional GAN on the Fashion-MNIST train split (DESIGN section 6).

Recipe (BigGAN at a toy scale; Brock et al., ICLR 2019, and Miyato et al., "Spectral Normalization for
Generative Adversarial Networks", ICLR 2018): the generator `FashionGenerator` against a projection discriminator
(Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018) whose convolutions are spectrally normalised;
hinge loss; Adam with learning rate 2e-4 and betas (0, 0.999) for both; one discriminator step per generator step
on the same batch of fakes;
an exponential moving average (EMA) of the generator's weights is what gets exported. The EMA's decay at
``t`` updates after its start is ``min(0.999, (1 + t) / (10 + t))`` (the warm-up of TensorFlow's
ExponentialMovingAverage), so early averages are not dominated by the random initial weights. Images are
the 28x28 train images zero-padded to 32x32 and scaled to [-1, 1] for the discriminator.

Everything random in step ``s`` (the data order of its epoch, the latents and fake labels) is drawn from streams
derived from the seed and ``s``, so a run resumed from a checkpoint continues exactly as the uninterrupted one
(same thread count). Checkpoints are one safetensors file (generator, EMA, discriminator, both Adam states; the
step counter and the run's settings in its JSON metadata), written to a temporary name and renamed, so an
interruption always leaves the last complete checkpoint. Nothing is pickled.

Before sampling or export, the EMA generator's batch-norm statistics are recomputed from its own samples
("standing statistics"): the running statistics collected while training belong to the live weights, not the
averaged ones.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm
from tqdm.auto import tqdm

from fedinvert import seeding
from fedinvert.errors import CheckpointError, ConfigError, DataNotFoundError
from fedinvert.priors.checkpoint import PathLike, load_strict
from fedinvert.priors.fashion import NUM_CLASSES, RESOLUTION, FashionGenerator
from fedinvert.provenance import code_revision, fashion_checksums

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
EXPORT_NAME = "fashion"
FORMAT = "fedinvert-prior-training/1"


# -- the discriminator -----------------------------------------------------------------------------------------
class ProjectionDiscriminator(nn.Module):
    """Four spectrally normalised convolutions, sum pooling, a linear output plus a class projection.

    Layers (for ``width`` w): 3x3 conv 1 -> w at 32x32, then 4x4 stride-2 convs w -> 2w (16x16), 2w -> 4w (8x8),
    4w -> 8w (4x4), each followed by LeakyReLU(0.1); features summed over space; output
    ``linear(phi) + <embed(y), phi>`` (Miyato & Koyama, 2018).

    Args:
        width: w, channels of the first convolution.
        num_classes: number of classes.

    Input images (N, 1, 32, 32) in [-1, 1] and labels (N,); output scores (N,).
    """

    def __init__(self, *, width: int = 32, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        widths = (1, width, 2 * width, 4 * width, 8 * width)
        convs = [nn.Conv2d(widths[0], widths[1], 3, padding=1)]
        convs += [nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1) for i in range(1, 4)]
        self.convs = nn.ModuleList(spectral_norm(conv) for conv in convs)
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, widths[-1]))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
        phi = x.sum(dim=(2, 3))
        return self.linear(phi).squeeze(1) + (self.embed(labels) * phi).sum(dim=1)


# -- data --------------------------------------------------------------------------------------------------------
def fashion_train_images(*, root: PathLike | None = None) -> tuple[Tensor, Tensor]:
    """The Fashion-MNIST train split zero-padded to 32x32: images (60000, 1, 32, 32) in [0, 1], labels (60000,).

    Raises:
        DataNotFoundError: the IDX files are not on this machine (the message says how to get them).
    """
    from fedinvert.data import build_dataset

    data = build_dataset("fashion-mnist", root=root).load(split="train")
    return pad_to_32(data.images), data.labels.to(torch.int64)


def pad_to_32(images: Tensor) -> Tensor:
    """Zero-pad (N, C, 28, 28) images to (N, C, 32, 32) (2 px each side); (N, C, 32, 32) pass unchanged."""
    size = images.shape[-1]
    if size == RESOLUTION:
        return images
    if size != 28 or images.shape[-2] != 28:
        raise ConfigError(
            f"the fashion prior trains on 28x28 or 32x32 images, got {tuple(images.shape[-2:])}"
        )
    return F.pad(images, (2, 2, 2, 2))


# -- settings and state ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """What defines a training run; a resumed run must keep ``seed``, ``batch_size`` and the optimiser settings.

    Attributes:
        seed: the one seed of the run (data order, latents, initialisation).
        batch_size: images per step (64).
        lr: Adam learning rate of both networks (2e-4).
        betas: Adam betas (0, 0.999).
        ema_decay: decay of the generator's weight average (0.999).
        d_width: discriminator width (32).
    """

    seed: int = 0
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.999)
    ema_decay: float = 0.999
    d_width: int = 32

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "betas": list(self.betas),
            "ema_decay": self.ema_decay,
            "d_width": self.d_width,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainSettings:
        return cls(
            seed=int(data["seed"]),
            batch_size=int(data["batch_size"]),
            lr=float(data["lr"]),
            betas=(float(data["betas"][0]), float(data["betas"][1])),
            ema_decay=float(data["ema_decay"]),
            d_width=int(data["d_width"]),
        )


@dataclass
class TrainResult:
    """What `train_prior` did.

    Attributes:
        step: steps completed in total (across sessions).
        total_steps: the step count the run aims at.
        steps_per_epoch: steps in one pass over the data.
        train_seconds: wall-clock seconds spent in training steps, summed over sessions.
        interrupted: True when Ctrl-C / SIGTERM stopped the run early (a checkpoint was saved).
        checkpoint: the checkpoint file.
        last_losses: (discriminator loss, generator loss) of the last step, or None if no step ran.
    """

    step: int
    total_steps: int
    steps_per_epoch: int
    train_seconds: float
    interrupted: bool
    checkpoint: Path
    last_losses: tuple[float, float] | None

    @property
    def epochs(self) -> float:
        """Passes over the data completed."""
        return self.step / self.steps_per_epoch


class GANTrainer:
    """Generator, EMA generator, discriminator and their optimisers, with exact save/resume.

    Args:
        images: (N, 1, 32, 32) training images in [0, 1].
        labels: (N,) integer labels in 0..9.
        settings: the run's settings.
    """

    def __init__(self, *, images: Tensor, labels: Tensor, settings: TrainSettings) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != (1, RESOLUTION, RESOLUTION):
            raise ConfigError(f"training images must be (N, 1, 32, 32), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ConfigError(
                f"need one label per image, got {tuple(labels.shape)} for {images.shape[0]} images"
            )
        if images.shape[0] < settings.batch_size or settings.batch_size < 2:
            raise ConfigError(
                f"batch_size must be in 2..{images.shape[0]} (the number of training images), got {settings.batch_size}"
            )
        self.settings = settings
        self.real = images * 2.0 - 1.0
        self.labels = labels.to(torch.int64)
        self.steps_per_epoch = images.shape[0] // settings.batch_size
        self.step = 0
        self.train_seconds = 0.0
        self.commands: list[list[str]] = []
        #: The git revision each command ran at (None outside a checkout), parallel to ``commands``.
        self.code_revisions: list[str | None] = []
        #: The step at which the EMA was (re)started from the live generator; its warm-up counts from here.
        self.ema_start = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.stream_seed(settings.seed, "prior"))
            self.generator = FashionGenerator()
            self.discriminator = ProjectionDiscriminator(width=settings.d_width)
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=settings.lr, betas=settings.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=settings.lr, betas=settings.betas)
        self._epoch_order: tuple[int, Tensor] | None = None

    # -- one step ---------------------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The real images ([-1, 1]) and labels of ``step``: slice ``step mod steps_per_epoch`` of its epoch's
        permutation (a seeded function of the epoch; the last incomplete batch of an epoch is dropped)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            order = torch.randperm(
                self.real.shape[0], generator=seeding.generator(self.settings.seed, f"prior-data-{epoch}")
            )
            self._epoch_order = (epoch, order)
        size = self.settings.batch_size
        chosen = self._epoch_order[1][index * size : (index + 1) * size]
        return self.real[chosen], self.labels[chosen]

    def train_step(self) -> tuple[float, float]:
        """One discriminator and one generator update (hinge loss), then the EMA update; returns both losses."""
        real, labels = self.batch(self.step)
        size = self.settings.batch_size
        rng = seeding.generator(self.settings.seed, f"prior-step-{self.step}")
        z = torch.randn(size, self.generator.z_dim, generator=rng)
        fake_labels = torch.randint(0, NUM_CLASSES, (size,), generator=rng)
        self.generator.train()
        self.discriminator.train()

        # One generator forward serves both updates (as in the PyTorch DCGAN recipe): the discriminator sees the
        # fakes detached, then the generator is scored by the updated discriminator on the same fakes.
        fake = self.generator(z, fake_labels) * 2.0 - 1.0
        scores = self.discriminator(torch.cat([real, fake.detach()]), torch.cat([labels, fake_labels]))
        loss_d = F.relu(1.0 - scores[:size]).mean() + F.relu(1.0 + scores[size:]).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        self.discriminator.requires_grad_(False)
        loss_g = -self.discriminator(fake, fake_labels).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.discriminator.requires_grad_(True)

        self._update_ema()
        self.step += 1
        return float(loss_d.detach()), float(loss_g.detach())

    @torch.no_grad()
    def restart_ema(self) -> None:
        """Restart the EMA from the live generator's weights at the current step (its warm-up starts again)."""
        self.ema.load_state_dict(self.generator.state_dict())
        self.ema_start = self.step

    @torch.no_grad()
    def _update_ema(self) -> None:
        since = self.step - self.ema_start
        decay = min(self.settings.ema_decay, (1.0 + since) / (10.0 + since))
        for average, live in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            average.lerp_(live, 1.0 - decay)
        for kept, current in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            kept.copy_(current)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Every tensor of the training state, flat: ``g.*``, ``ema.*``, ``d.*``, ``opt_g.*``, ``opt_d.*``."""
        tensors: dict[str, Tensor] = {}
        for prefix, module in (("g", self.generator), ("ema", self.ema), ("d", self.discriminator)):
            for key, value in module.state_dict().items():
                tensors[f"{prefix}.{key}"] = value.detach().clone().contiguous()
        for prefix, optimizer in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            for index, state in optimizer.state_dict()["state"].items():
                for key, value in state.items():
                    tensors[f"{prefix}.{index}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
        return tensors

    def metadata(self) -> dict[str, Any]:
        """The JSON side of a checkpoint: format, step, epochs, timing, settings, commands, torch version."""
        return {
            "format": FORMAT,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.step / self.steps_per_epoch,
            "train_seconds": self.train_seconds,
            "ema_start": self.ema_start,
            "settings": self.settings.as_json(),
            "commands": self.commands,
            "code_revisions": self.code_revisions,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }

    def save(self, path: Path, *, extra: dict[str, Any] | None = None) -> None:
        """Write the checkpoint to ``path`` atomically (temporary file in the same folder, then rename)."""
        meta = {**self.metadata(), **(extra or {})}
        _atomic_save(self.state_tensors(), path, metadata={"fedinvert": json.dumps(meta)})
        _atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")

    def load(self, path: Path) -> dict[str, Any]:
        """Restore the state saved by `save`; returns the checkpoint's metadata.

        Raises:
            CheckpointError: the file is corrupt, or was written by a run with other settings.
        """
        tensors, meta = read_checkpoint(path)
        saved = TrainSettings.from_json(meta["settings"])
        if saved != self.settings:
            raise ConfigError(
                f"{path} was trained with {saved}, not {self.settings}; use the same --seed and --batch-size"
                " to resume, or another --out for a new run"
            )
        if int(meta["steps_per_epoch"]) != self.steps_per_epoch:
            raise ConfigError(
                f"{path} was trained on a data set of another size; use another --out for a new run"
            )
        for prefix, module in (("g", self.generator), ("ema", self.ema), ("d", self.discriminator)):
            part = _strip(tensors, prefix)
            load_strict(module, part, what=f"training state {prefix!r}", source=str(path))
        for prefix, optimizer in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            state_dict = optimizer.state_dict()
            state: dict[int, dict[str, Tensor]] = {}
            for key, value in _strip(tensors, prefix).items():
                index, name = key.split(".", 1)
                state.setdefault(int(index), {})[name] = value
            state_dict["state"] = state
            optimizer.load_state_dict(state_dict)
        self.step = int(meta["step"])
        self.train_seconds = float(meta["train_seconds"])
        self.ema_start = int(meta.get("ema_start", 0))
        self.commands = [list(c) for c in meta.get("commands", [])]
        self.code_revisions = list(meta.get("code_revisions", [None] * len(self.commands)))
        self._epoch_order = None
        return meta


def read_checkpoint(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and metadata of a training checkpoint (safetensors, read without unpickling).

    Raises:
        DataNotFoundError: no file at ``path``.
        CheckpointError: not a fedinvert prior-training checkpoint, or corrupt.
    """
    file = Path(path)
    if not file.is_file():
        raise DataNotFoundError(
            f"no training checkpoint at {file}; start one with `fedinvert train-prior --out DIR`"
        )
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get("fedinvert")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a mapping
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file} is not a valid safetensors checkpoint ({exc})") from None
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a fedinvert prior-training checkpoint (no {FORMAT} metadata)")
    return tensors, meta


def _strip(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    start = prefix + "."
    return {key[len(start) :]: value for key, value in tensors.items() if key.startswith(start)}


def _atomic_save(tensors: dict[str, Tensor], path: Path, *, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(temporary), metadata=metadata)
    temporary.chmod(0o644)  # safetensors creates 0600 files; exported weights are package data
    os.replace(temporary, path)


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


# -- sampling and export -----------------------------------------------------------------------------------------
@torch.no_grad()
def standing_stats(
    generator: FashionGenerator, *, seed: int, batches: int = 10, batch_size: int = 100
) -> FashionGenerator:
    """A copy of ``generator`` whose batch-norm statistics are the average over its own samples.

    Runs ``batches`` batches of N(0, I) latents with uniformly drawn classes in training mode with cumulative
    averaging (momentum None), from the stream ``prior-standing`` of ``seed``; returns the copy in eval mode.
    """
    copied = copy.deepcopy(generator)
    norms = [m for m in copied.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    rng = seeding.generator(seed, "prior-standing")
    copied.train()
    for _ in range(batches):
        z = torch.randn(batch_size, copied.z_dim, generator=rng)
        labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=rng)
        copied(z, labels)
    for norm in norms:
        norm.momentum = 0.1
    return copied.eval()


@torch.no_grad()
def class_grid(generator: FashionGenerator, *, seed: int, per_class: int = 10) -> Tensor:
    """Samples as a (10 * per_class, 1, 32, 32) tensor in [0, 1]: row c holds ``per_class`` samples of class c,
    from fixed latents (stream ``prior-grid`` of ``seed``) so grids of different steps are comparable."""
    rng = seeding.generator(seed, "prior-grid")
    z = torch.randn(NUM_CLASSES * per_class, generator.z_dim, generator=rng)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    return generator.eval()(z, labels)


def save_grid(images: Tensor, path: PathLike, *, columns: int = 10, scale: int = 2) -> None:
    """Write (N, 1, H, W) images in [0, 1] as one PNG grid with ``columns`` images a row (atomically)."""
    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    canvas = torch.ones(rows * (h + 2), columns * (w + 2))
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = images[i, 0]
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(np.ascontiguousarray(pixels), mode="L")
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}.png")
    picture.save(temporary)
    os.replace(temporary, target)


def export_generator(
    *,
    checkpoint: PathLike,
    export_dir: PathLike,
    command: Sequence[str] | None = None,
    note: str | None = None,
    standing_samples: int = 1000,
) -> Path:
    """Export a checkpoint's EMA generator (with standing statistics) as ``fashion.safetensors`` + ``fashion.json``.

    Reads the checkpoint file only, so it may run while training goes on in the same folder.

    Args:
        checkpoint: a training checkpoint (``checkpoint.safetensors``) or the folder holding it.
        export_dir: where to write ``fashion.safetensors`` and ``fashion.json``.
        command: the export command line, recorded in the JSON.
        note: a remark recorded in the JSON (e.g. that this is a mid-training snapshot).
        standing_samples: samples for the standing batch-norm statistics (in batches of up to 100).

    Returns:
        The written weights file.
    """
    source = Path(checkpoint)
    if source.is_dir():
        source = source / CHECKPOINT_FILE
    tensors, meta = read_checkpoint(source)
    generator = FashionGenerator()
    load_strict(generator, _strip(tensors, "ema"), what="fashion generator", source=str(source))
    settings = TrainSettings.from_json(meta["settings"])
    generator = standing_stats(generator, seed=settings.seed, **_standing_batches(standing_samples))
    total = meta.get("total_steps")
    info: dict[str, Any] = {
        "prior": EXPORT_NAME,
        "architecture": "FashionGenerator (fedinvert.priors.fashion)",
        "training_commands": meta.get("commands", []),
        "code_revisions": meta.get("code_revisions", []),
        "export_command": list(command) if command is not None else None,
        "export_code_revision": code_revision(),
        "data_sha256": meta.get("data_sha256"),
        "seed": settings.seed,
        "steps": meta["step"],
        "ema_start": meta.get("ema_start", 0),
        "epochs": meta["epochs"],
        "total_steps": total,
        "complete": bool(total is not None and meta["step"] >= total),
        "batch_size": settings.batch_size,
        "train_seconds": meta["train_seconds"],
        "seconds_per_step": meta["train_seconds"] / max(int(meta["step"]), 1),
        "threads": meta.get("threads"),
        "torch": meta.get("torch"),
        "settings": meta["settings"],
        "weights": f"EMA generator with standing batch-norm statistics ({standing_samples} own samples)",
        "note": note,
    }
    target = Path(export_dir) / f"{EXPORT_NAME}.safetensors"
    state = {key: value.contiguous() for key, value in generator.state_dict().items()}
    _atomic_save(state, target, metadata={"fedinvert": json.dumps(info)})
    _atomic_write_text(target.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return target


def _standing_batches(samples: int) -> dict[str, int]:
    if samples < 2:
        raise ConfigError(f"standing statistics need at least 2 samples, got {samples}")
    size = min(samples, 100)
    return {"batches": math.ceil(samples / size), "batch_size": size}


# -- the training loop -------------------------------------------------------------------------------------------
@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps (so the state saved is that of a whole step)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag.is_set
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def total_steps_for(*, steps: int | None, epochs: float | None, steps_per_epoch: int) -> int:
    """The run's total step count from ``steps`` or ``epochs`` (exactly one must be given)."""
    if (steps is None) == (epochs is None):
        raise ConfigError("give exactly one of steps and epochs")
    if steps is not None:
        if steps < 0:
            raise ConfigError(f"steps must be >= 0, got {steps}")
        return steps
    assert epochs is not None
    if epochs <= 0:
        raise ConfigError(f"epochs must be > 0, got {epochs}")
    return math.ceil(epochs * steps_per_epoch)


def train_prior(
    *,
    out: PathLike,
    steps: int | None = None,
    epochs: float | None = None,
    settings: TrainSettings | None = None,
    sample_every: int = 500,
    checkpoint_every: int = 100,
    resume: bool | None = None,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    command: Sequence[str] | None = None,
    progress: bool = False,
    export_dir: PathLike | None = None,
    standing_samples: int = 1000,
    restart_ema: bool = False,
) -> TrainResult:
    """Train (or resume training) the ``fashion`` prior's GAN; see the module docstring for the recipe.

    Args:
        out: the checkpoint folder: ``checkpoint.safetensors`` (+ ``.json``), ``samples/step_XXXXXXX.png`` and
            ``samples/latest.png`` (10 classes x 10 EMA samples), and the exported ``fashion.safetensors`` when
            the run completes.
        steps: total steps of the run (counting steps already done), or
        epochs: total passes over the data (exactly one of the two).
        settings: seed, batch size, optimiser settings; a resumed run must match its checkpoint.
        sample_every: write a sample grid every this many steps (0: never, except at the end).
        checkpoint_every: save a checkpoint every this many steps (and at the end, and on Ctrl-C/SIGTERM).
        resume: True: a checkpoint must exist in ``out``; False: it must not; None: resume if there is one.
        images: (N, 1, 32 or 28, 32 or 28) training images in [0, 1]; None: the Fashion-MNIST train split.
        labels: (N,) labels for ``images``.
        command: the command line, recorded in the checkpoint and the export.
        progress: show a tqdm progress bar.
        export_dir: where the completed run exports ``fashion.safetensors``; None: ``out``.
        standing_samples: samples for the standing batch-norm statistics of sample grids and the export.
        restart_ema: restart the EMA from the live generator at the current step (e.g. after a change of the EMA
            recipe); recorded as ``ema_start`` in the checkpoint.

    Returns:
        What was done; ``interrupted`` when a signal stopped it (the checkpoint holds the last whole step).

    Raises:
        ConfigError: bad settings, or a checkpoint from a run with other settings.
        DataNotFoundError: Fashion-MNIST is not installed (and no images were given).
        CheckpointError: the checkpoint in ``out`` is corrupt.
    """
    settings = settings or TrainSettings()
    if sample_every < 0 or checkpoint_every < 1:
        raise ConfigError("sample_every must be >= 0 and checkpoint_every >= 1")
    folder = Path(out)
    path = folder / CHECKPOINT_FILE
    data_sha256 = None
    if images is None:
        images, labels = fashion_train_images()
        data_sha256 = fashion_checksums("train")
    elif labels is None:
        raise ConfigError("give labels with images")
    trainer = GANTrainer(images=pad_to_32(images), labels=labels, settings=settings)
    total = total_steps_for(steps=steps, epochs=epochs, steps_per_epoch=trainer.steps_per_epoch)
    exists = path.is_file()
    if resume is True and not exists:
        raise DataNotFoundError(f"--resume: no checkpoint at {path}")
    if resume is False and exists:
        raise ConfigError(f"{path} exists; resume it or choose another --out")
    if exists:
        trainer.load(path)
        logger.info("resuming %s at step %d", path, trainer.step)
    if restart_ema:
        trainer.restart_ema()
    trainer.commands.append(list(command) if command is not None else ["train_prior"])
    trainer.code_revisions.append(code_revision())
    extra = {"total_steps": total, "data_sha256": data_sha256}

    def snapshot(step: int) -> None:
        averaged = standing_stats(trainer.ema, seed=settings.seed, **_standing_batches(standing_samples))
        grid = class_grid(averaged, seed=settings.seed)
        save_grid(grid, folder / "samples" / f"step_{step:07d}.png")
        save_grid(grid, folder / "samples" / "latest.png")

    losses: tuple[float, float] | None = None
    interrupted = False
    bar = tqdm(
        total=total,
        initial=min(trainer.step, total),
        disable=not progress,
        desc="train-prior",
        unit="step",
        mininterval=1.0 if _is_tty() else 30.0,
    )
    with bar, _stop_on_signals() as stopped:
        while trainer.step < total:
            if stopped():
                interrupted = True
                break
            started = time.perf_counter()
            losses = trainer.train_step()
            trainer.train_seconds += time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(
                d=f"{losses[0]:.3f}",
                g=f"{losses[1]:.3f}",
                epoch=f"{trainer.step / trainer.steps_per_epoch:.2f}",
                refresh=False,
            )
            if trainer.step % checkpoint_every == 0:
                trainer.save(path, extra=extra)
            if sample_every and trainer.step % sample_every == 0:
                snapshot(trainer.step)
        trainer.save(path, extra=extra)
    if not interrupted:
        snapshot(trainer.step)
        export_generator(
            checkpoint=path,
            export_dir=export_dir or folder,
            command=command,
            standing_samples=standing_samples,
        )
    return TrainResult(
        step=trainer.step,
        total_steps=total,
        steps_per_epoch=trainer.steps_per_epoch,
        train_seconds=trainer.train_seconds,
        interrupted=interrupted,
        checkpoint=path,
        last_losses=losses,
    )


def _is_tty() -> bool:
    return sys.stderr.isatty()
