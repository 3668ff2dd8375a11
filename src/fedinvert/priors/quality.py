"""How good is a class-conditional Fashion-MNIST prior? Class agreement and a Fréchet distance, with our classifier.

* `FashionClassifier`: a small CNN trained by `train_classifier` on the Fashion-MNIST train split (padded to
  32x32, like the ``fashion`` prior's images); its weights ship as ``priors/weights/fashion_classifier.safetensors``.
* `class_agreement`: the fraction of class-conditioned prior samples that the classifier labels as their class.
* `frechet_distance`: the Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., "GANs
  Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017), here on the
  classifier's penultimate features instead of Inception's. `prior_quality` reports it for prior samples vs the
  test split beside the same distance for as many train images vs the test split (the floor a perfect prior
  would reach).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fedinvert import seeding
from fedinvert.errors import ConfigError, DataNotFoundError
from fedinvert.priors.base import Prior
from fedinvert.priors.checkpoint import PathLike, load_strict, read_state_dict
from fedinvert.priors.fashion import NUM_CLASSES, WEIGHTS_DIR
from fedinvert.provenance import code_revision, fashion_checksums

CLASSIFIER_FILE = WEIGHTS_DIR / "fashion_classifier.safetensors"
#: Fashion-MNIST normalisation (DESIGN section 12); the padded border is 0 as in the 28x28 images.
MEAN, STD = 0.2860, 0.3530


class FashionClassifier(nn.Module):
    """A small CNN for 32x32 Fashion-MNIST images: three conv-BN-ReLU-maxpool blocks (32, 64, 128 channels),
    then a 256-unit hidden layer (the penultimate features) and a linear head.

    Input (N, 1, 32, 32) in [0, 1] (normalised inside with mean 0.2860, std 0.3530); `features` gives (N, 256),
    `forward` logits (N, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for channels in (32, 64, 128):
            layers += [
                nn.Conv2d(previous, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            previous = channels
        self.body = nn.Sequential(*layers)
        self.hidden = nn.Linear(128 * 4 * 4, 256)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(256, NUM_CLASSES)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (N, 256) (after ReLU) of (N, 1, 32, 32) images in [0, 1]."""
        x = self.body((images - MEAN) / STD)
        return F.relu(self.hidden(torch.flatten(x, 1)))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(images)))


def load_classifier(*, weights: PathLike | None = None) -> FashionClassifier:
    """The trained classifier in eval mode, from ``weights`` or the committed ``fashion_classifier.safetensors``.

    Raises:
        DataNotFoundError: the file is missing (the message says how to train it).
        CheckpointError: the file is corrupt or does not match the architecture.
    """
    path = Path(weights) if weights is not None else CLASSIFIER_FILE
    if not path.is_file():
        raise DataNotFoundError(
            f"no Fashion-MNIST classifier weights at {path}; train them with"
            " `python benchmarks/train_fashion_classifier.py` or pass weights=PATH"
        )
    model = FashionClassifier()
    load_strict(
        model, read_state_dict(path, what="fashion classifier"), what="fashion classifier", source=str(path)
    )
    return model.eval().requires_grad_(False)


@dataclass
class ClassifierResult:
    """A trained classifier with its test accuracy (fraction in [0, 1]) and training time in seconds."""

    model: FashionClassifier
    test_accuracy: float
    epochs: int
    seconds: float


def fashion_split(split: str, *, root: PathLike | None = None) -> tuple[Tensor, Tensor]:
    """A Fashion-MNIST split padded to 32x32: images (N, 1, 32, 32) in [0, 1] and labels (N,) int64."""
    from fedinvert.data import build_dataset
    from fedinvert.priors.training import pad_to_32

    data = build_dataset("fashion-mnist", root=root).load(split=split)
    return pad_to_32(data.images), data.labels.to(torch.int64)


def train_classifier(
    *,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    test_images: Tensor | None = None,
    test_labels: Tensor | None = None,
    progress: bool = False,
) -> ClassifierResult:
    """Train `FashionClassifier` with Adam (cosine-decayed learning rate) and random horizontal flips.

    Args:
        epochs: passes over the training images (>= 1).
        batch_size: images per step.
        lr: peak Adam learning rate.
        seed: seeds initialisation and data order (streams ``model`` and ``data``).
        images, labels: training set (N, 1, 32, 32) in [0, 1] and (N,); None: the Fashion-MNIST train split.
        test_images, test_labels: evaluation set; None: the Fashion-MNIST test split.
        progress: show a tqdm progress bar.
    """
    if epochs < 1 or batch_size < 1:
        raise ConfigError("epochs and batch_size must be >= 1")
    if images is None or labels is None:
        images, labels = fashion_split("train")
    if test_images is None or test_labels is None:
        test_images, test_labels = fashion_split("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.stream_seed(seed, "model"))
        model = FashionClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = max(images.shape[0] // batch_size, 1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    rng = seeding.generator(seed, "data")
    started = time.perf_counter()
    with tqdm(total=epochs * steps_per_epoch, disable=not progress, desc="classifier", unit="step") as bar:
        for _ in range(epochs):
            order = torch.randperm(images.shape[0], generator=rng)
            model.train()
            for i in range(steps_per_epoch):
                chosen = order[i * batch_size : (i + 1) * batch_size]
                x = images[chosen]
                flip = torch.rand(x.shape[0], generator=rng) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = F.cross_entropy(model(x), labels[chosen])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
    model.eval().requires_grad_(False)
    accuracy = float((predict(model, test_images) == test_labels).float().mean())
    return ClassifierResult(
        model=model, test_accuracy=accuracy, epochs=epochs, seconds=time.perf_counter() - started
    )


@torch.no_grad()
def predict(model: FashionClassifier, images: Tensor, *, batch_size: int = 500) -> Tensor:
    """Predicted classes (N,) of (N, 1, 32, 32) images in [0, 1]."""
    return torch.cat(
        [model(images[i : i + batch_size]).argmax(1) for i in range(0, images.shape[0], batch_size)]
    )


@torch.no_grad()
def features(model: FashionClassifier, images: Tensor, *, batch_size: int = 500) -> Tensor:
    """Penultimate features (N, 256) of (N, 1, 32, 32) images in [0, 1]."""
    return torch.cat(
        [model.features(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    )


@torch.no_grad()
def class_samples(
    prior: Prior, *, per_class: int, seed: int = 0, batch_size: int = 200
) -> tuple[Tensor, Tensor]:
    """``per_class`` samples of each class from a class-conditional prior: images (10 * per_class, C, H, W) in
    [0, 1] and their labels, from the stream ``prior`` of ``seed``."""
    if prior.num_classes is None:
        raise ConfigError(f"{prior.name} is unconditional; class agreement needs a class-conditional prior")
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    labels = torch.arange(prior.num_classes).repeat_interleave(per_class)
    latents = prior.sample_latent(labels.shape[0], generator=seeding.generator(seed, "prior"))
    images = [
        prior(latents[i : i + batch_size], prior.condition(labels[i : i + batch_size]))
        for i in range(0, labels.shape[0], batch_size)
    ]
    return torch.cat(images), labels


def class_agreement(predicted: Tensor, labels: Tensor) -> tuple[float, list[float]]:
    """Overall and per-class fraction of samples whose predicted class is the class they were conditioned on."""
    hits = (predicted == labels).float()
    per_class = [
        float(hits[labels == c].mean()) if bool((labels == c).any()) else float("nan")
        for c in range(NUM_CLASSES)
    ]
    return float(hits.mean()), per_class


def gaussian_stats(feats: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased) of (N, D) features, in float64; N >= 2."""
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ConfigError(f"need (N >= 2, D) features, got {tuple(feats.shape)}")
    x = feats.detach().cpu().double().numpy()
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features ``a`` (N, D) and ``b`` (M, D)::

        ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))

    The matrix square root is scipy.linalg.sqrtm; its numerically imaginary part is dropped and, if the product
    is singular, a small multiple of the identity is added to the covariances (as in the reference FID code).
    """
    mu_a, cov_a = gaussian_stats(a)
    mu_b, cov_b = gaussian_stats(b)
    # With fewer samples than dimensions the covariances are singular; sqrtm then warns, and the result is
    # still the right one for the trace (or non-finite, which the offset below repairs).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            offset = np.eye(cov_a.shape[0]) * 1e-6
            root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root), 0.0))


def balanced_subset(labels: Tensor, *, per_class: int, seed: int = 0) -> Tensor:
    """Indices of ``per_class`` random items of each class 0..9 (stream ``data`` of ``seed``)."""
    rng = seeding.generator(seed, "data")
    chosen = []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < per_class:
            raise ConfigError(f"class {c} has {members.numel()} items, fewer than per_class={per_class}")
        chosen.append(members[torch.randperm(members.numel(), generator=rng)[:per_class]])
    return torch.cat(chosen)


def prior_quality(
    prior: Prior,
    classifier: FashionClassifier,
    *,
    per_class: int = 100,
    seed: int = 0,
    train: tuple[Tensor, Tensor] | None = None,
    test: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """Class agreement and Fréchet distances of a class-conditional 1x32x32 prior.

    Args:
        prior: the prior (e.g. ``FashionPrior()``).
        classifier: the judge (`load_classifier`).
        per_class: samples per class (the same number of train images per class form the floor).
        seed: seeds the latents and the train subset.
        train, test: (images, labels) padded to 32x32; None: the Fashion-MNIST splits.

    Returns:
        ``agreement`` (fraction), ``agreement_per_class`` (10 fractions), ``fd_prior_test`` (prior samples vs
        the whole test split), ``fd_train_test`` (as many class-balanced train images vs the test split: the
        floor), ``fd_ratio`` (their ratio), ``samples`` (number of prior samples).
    """
    train_images, train_labels = train if train is not None else fashion_split("train")
    test_images, _ = test if test is not None else fashion_split("test")
    images, labels = class_samples(prior, per_class=per_class, seed=seed)
    agreement, per_class_agreement = class_agreement(predict(classifier, images), labels)
    test_features = features(classifier, test_images)
    floor_images = train_images[balanced_subset(train_labels, per_class=per_class, seed=seed)]
    fd_prior = frechet_distance(features(classifier, images), test_features)
    fd_floor = frechet_distance(features(classifier, floor_images), test_features)
    return {
        "agreement": agreement,
        "agreement_per_class": per_class_agreement,
        "fd_prior_test": fd_prior,
        "fd_train_test": fd_floor,
        "fd_ratio": fd_prior / fd_floor if fd_floor > 0 else float("inf"),
        "samples": int(labels.shape[0]),
    }


def classifier_metadata(result: ClassifierResult, *, command: list[str], seed: int) -> str:
    """The JSON written beside the classifier's weights (trained on the Fashion-MNIST files installed here)."""
    return (
        json.dumps(
            {
                "model": "FashionClassifier (fedinvert.priors.quality)",
                "command": command,
                "seed": seed,
                "epochs": result.epochs,
                "test_accuracy": result.test_accuracy,
                "train_seconds": result.seconds,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "data": "Fashion-MNIST train split padded to 32x32; accuracy on the test split padded likewise",
                "code_revision": code_revision(),
                "data_sha256": fashion_checksums("train", "test"),
            },
            indent=2,
        )
        + "\n"
    )
