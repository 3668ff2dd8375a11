"""Building data sets by name and drawing the private batch of a run (DESIGN §12 "Data")."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedinvert.data.base import DATASETS, Dataset, check_indices, check_positive_int
from fedinvert.data.transforms import convert_channels, resize
from fedinvert.errors import ConfigError
from fedinvert.seeding import numpy_rng

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


@dataclass(frozen=True)
class Batch:
    """A client's private batch.

    Attributes:
        images: (B, C, H, W) float32 in [0, 1], un-normalised.
        labels: (B,) int64 in [0, num_classes).
        indices: positions of the images in the split, in batch order.
        num_classes: size of the label space.
        split: the split the images come from.
        name: registry name of the data set.
    """

    images: Tensor
    labels: Tensor
    indices: list[int]
    num_classes: int
    split: str
    name: str


def default_normalization(dataset_name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) per channel a client applies to [0, 1] images of ``dataset_name`` by default.

    Fashion-MNIST uses its pixel statistics, mean 0.2860 and std 0.3530; every other data set 0.5 and 0.5.
    """
    channels = check_positive_int(channels, key="channels")
    if dataset_name == "fashion-mnist":
        return (FASHION_MNIST_MEAN,) * channels, (FASHION_MNIST_STD,) * channels
    return (0.5,) * channels, (0.5,) * channels


def _normalization_entries(spec: dict[Any, Any], key: str) -> list[float]:
    values = spec[key]
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"normalization.{key} must be a number or a non-empty list of numbers, got {values!r}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"normalization.{key} entries must be finite numbers, got {value!r}")
        if key == "std" and value <= 0:
            raise ConfigError(f"normalization.std entries must be positive, got {value!r}")
        out.append(float(value))
    return out


def check_normalization(spec: object) -> str | dict[str, list[float]]:
    """Validate the ``normalization`` config value without knowing the channel count (ConfigError otherwise).

    Accepted: ``auto`` (or None: the same) — `default_normalization` of the data set —, ``identity`` — the
    victim sees [0, 1] images (mean 0, std 1) —, or a mapping ``{mean: [...], std: [...]}`` of 1 or C finite
    numbers each (a single number is one entry), every std > 0. Returns ``auto``, ``identity`` or the mapping
    with float lists.
    """
    if spec is None or spec == "auto":
        return "auto"
    if spec == "identity":
        return "identity"
    if not isinstance(spec, dict):
        raise ConfigError(f"normalization must be auto, identity or {{mean: [...], std: [...]}}, got {spec!r}")
    keys = set(spec)
    if keys != {"mean", "std"}:
        missing, extra = sorted({"mean", "std"} - keys), sorted(keys - {"mean", "std"})
        what = f"lacks {missing[0]}" if missing else f"has an unknown key {extra[0]!r}"
        raise ConfigError(f"normalization {what}; give both normalization.mean and normalization.std")
    return {"mean": _normalization_entries(spec, "mean"), "std": _normalization_entries(spec, "std")}


def resolve_normalization(
    spec: object, dataset_name: str, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) per channel (C entries each) that the ``normalization`` config value names.

    ``auto`` gives `default_normalization` (DESIGN §12), ``identity`` mean 0 / std 1 (the victim sees [0, 1]
    images), a mapping its values, a single entry repeated to all C channels.

    Raises:
        ConfigError: an invalid value (see `check_normalization`), or a mapping whose mean or std has neither
            1 nor C entries.
    """
    checked = check_normalization(spec)
    channels = check_positive_int(channels, key="channels")
    if checked == "auto":
        return default_normalization(dataset_name, channels)
    if checked == "identity":
        return (0.0,) * channels, (1.0,) * channels
    assert isinstance(checked, dict)
    resolved = []
    for key in ("mean", "std"):
        values = checked[key]
        if len(values) not in (1, channels):
            raise ConfigError(
                f"normalization.{key} has {len(values)} entries ({values}), but the images have {channels} channel"
                f"{'s' if channels != 1 else ''}: give 1 or {channels}"
            )
        resolved.append(tuple(values * channels if len(values) == 1 else values))
    return resolved[0], resolved[1]


def _constructor_keywords(name: str) -> frozenset[str]:
    factory, _ = DATASETS.entry(name)
    return frozenset(inspect.signature(factory).parameters)


def build_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """The registered data set ``name``, given those options its constructor takes.

    Options that are ``None`` are left at the data set's defaults. ``image_size`` and ``channels`` that the
    data set does not take are not errors: `load_batch` applies them to the images afterwards.

    Raises:
        ConfigError: unknown ``name`` (the message lists the known ones); ``root`` for a data set that reads
            no files; ``num_classes`` that differs from a labelled data set's class count.
    """
    accepted = _constructor_keywords(name)
    if root is not None and "root" not in accepted:
        raise ConfigError(f"dataset '{name}' comes with its Python packages and takes no root; drop dataset.root")
    options = {"root": root, "image_size": image_size, "channels": channels, "num_classes": num_classes}
    dataset = DATASETS.build(name, **{k: v for k, v in options.items() if v is not None and k in accepted})
    if num_classes is not None and num_classes != dataset.num_classes:
        raise ConfigError(
            f"dataset '{name}' has {dataset.num_classes} classes, but num_classes={num_classes} was given"
        )
    return dataset


def sample_indices(
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    num_classes: int,
    unique_labels: bool = False,
    shared_labels: int | None = None,
    where: str = "the split",
) -> np.ndarray:
    """``batch_size`` distinct positions into ``labels``, drawn from the seed's ``data`` stream.

    With ``unique_labels`` no label occurs twice: positions are visited in a seeded random order and each
    label's first position is kept.

    Args:
        labels: (N,) labels of the whole split.
        batch_size: number of positions, 1..N (and at most ``num_classes`` with ``unique_labels``).
        seed: the run's seed; only its ``data`` stream is used.
        num_classes: size of the label space.
        unique_labels: whether the batch must have pairwise different labels.
        shared_labels: exactly this many positions share one label and the others have distinct labels of
            their own (0: all labels distinct; the survey's repeated-label setting); the shared label is the
            label of the first position, in the seeded order, whose label has enough images.
        where: how error messages name the split.
    """
    if batch_size > len(labels):
        raise ConfigError(f"batch_size={batch_size} exceeds the {len(labels)} images of {where}")
    rng = numpy_rng(seed, "data")
    if shared_labels is not None:
        return _sharing(labels, rng.permutation(len(labels)), batch_size, shared_labels, where)
    if not unique_labels:
        return rng.choice(len(labels), size=batch_size, replace=False).astype(np.int64)
    if batch_size > num_classes:
        raise ConfigError(
            f"unique_labels needs batch_size <= num_classes ({num_classes}), got batch_size={batch_size}"
        )
    order = rng.permutation(len(labels))
    _, first = np.unique(labels[order], return_index=True)
    if len(first) < batch_size:
        raise ConfigError(
            f"{where} holds only {len(first)} different labels, too few for unique_labels with "
            f"batch_size={batch_size}"
        )
    return order[np.sort(first)[:batch_size]].astype(np.int64)


LAYOUT_SEED = 20_261_204
"""Seeds the fixed order of `layout_indices` (independent of every run's seed, so batch k is the same images
whatever seed the run has)."""


def layout_indices(
    labels: np.ndarray,
    *,
    batch_size: int,
    batch: int,
    num_classes: int,
    unique_labels: bool = False,
    where: str = "the split",
) -> np.ndarray:
    """Positions of private batch ``batch`` (0, 1, ...) of a fixed layout: disjoint batches of ``batch_size``.

    The split's positions are put in one fixed random order (`LAYOUT_SEED`) and dealt into consecutive batches;
    with ``unique_labels`` each batch takes, in that order, the next unused positions whose labels it does not
    hold yet. Batch k therefore shares no image with batches 0..k-1 of the same size, for any run seed: the
    replicate axis of a study (``dataset.batch: [0, 1, ..., 7]``) is then 8 distinct private batches.
    """
    if unique_labels and batch_size > num_classes:
        raise ConfigError(f"unique_labels needs batch_size <= num_classes ({num_classes}), got batch_size={batch_size}")
    order = list(np.random.default_rng(LAYOUT_SEED).permutation(len(labels)))
    chosen: list[int] = []
    for _ in range(batch + 1):
        chosen, seen, rest = [], set(), []
        for i, position in enumerate(order):
            label = int(labels[position])
            if unique_labels and label in seen:
                rest.append(position)
                continue
            chosen.append(position)
            seen.add(label)
            if len(chosen) == batch_size:
                rest.extend(order[i + 1:])
                break
        if len(chosen) < batch_size:
            need = "disjoint batches of " + str(batch_size) + (" distinct labels" if unique_labels else "")
            raise ConfigError(f"dataset.batch={batch}: {where} holds too few images for {batch + 1} {need}")
        order = rest
    return np.array(sorted(chosen), dtype=np.int64)


def _sharing(labels: np.ndarray, order: np.ndarray, batch_size: int, shared: int, where: str) -> np.ndarray:
    """Positions of `sample_indices` with ``shared_labels``: ``shared`` of one label, the rest distinct."""
    if shared == 1 or shared > batch_size:
        raise ConfigError(
            f"dataset.shared_labels must be 0 (no label repeats) or 2..batch_size={batch_size}, got {shared}"
        )
    ordered = labels[order]
    values, first, counts = np.unique(ordered, return_index=True, return_counts=True)
    others = batch_size - shared
    if shared == 0:
        if len(values) < batch_size:
            raise ConfigError(f"{where} holds {len(values)} different labels, too few for {batch_size} distinct ones")
        return order[np.sort(first)[:batch_size]].astype(np.int64)
    candidates = [(f, v) for f, v, c in zip(first, values, counts, strict=True) if c >= shared]
    if not candidates or len(values) - 1 < others:
        raise ConfigError(
            f"{where} cannot give {shared} images of one label and {others} of distinct other labels"
        )
    label = min(candidates)[1]
    same = np.flatnonzero(ordered == label)[:shared]
    rest = np.sort([f for f, v in zip(first, values, strict=True) if v != label])[:others]
    return order[np.sort(np.concatenate([same, rest]).astype(np.int64))].astype(np.int64)


def load_batch(
    name: str,
    *,
    batch_size: int,
    indices: Sequence[int] | None = None,
    split: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    unique_labels: bool = False,
    shared_labels: int | None = None,
    batch: int | None = None,
    root: str | Path | None = None,
) -> Batch:
    """Draw a private batch from the data set registered as ``name``.

    Args:
        name: registry name (``fashion-mnist``, ``photos``, ``lfw``, ``digits``, ``folder``, ``cifar10``,
            ``cifar100``, ``synthetic``).
        batch_size: number of images B >= 1.
        indices: positions in the split (file order) to use, exactly ``batch_size`` of them; ``None``
            samples without replacement from the seed's ``data`` stream.
        split: ``train`` or ``test`` where the data set has both; ``None`` is its default (``test``).
        image_size: side S of the returned square images; ``None`` keeps the native size. Photos and
            folders are cropped at this size, other sets are resized (bilinear, anti-aliased).
        channels: 1 or 3; grey is repeated to RGB, RGB becomes grey by BT.601 luminance. ``None`` keeps them.
        num_classes: label space of unlabelled sets (label = index mod num_classes, default 10); for
            labelled sets it must match their class count when given.
        seed: the run's seed.
        unique_labels: sample so that no label repeats (needs B <= num_classes); with ``indices`` it
            checks that their labels are distinct.
        shared_labels: draw a batch in which exactly this many images share one label and the others have
            distinct labels (0: none shared); see `sample_indices`. Not with ``indices`` or ``unique_labels``.
        batch: take private batch k of a fixed layout of disjoint batches (see `layout_indices`) instead of
            a draw from the seed; not with ``indices`` or ``shared_labels``.
        root: where the files of ``fashion-mnist``, ``folder``, ``cifar10`` and ``cifar100`` are.

    Returns:
        A `Batch` with images (B, C, S, S) float32 in [0, 1] and labels (B,) int64.

    Raises:
        ConfigError: bad option, unknown name or split, out-of-range index, wrong number of indices.
        DataNotFoundError: the data set's files are not on this machine (the message says how to get them).
    """
    batch_size = check_positive_int(batch_size, key="batch_size")
    if image_size is not None:
        image_size = check_positive_int(image_size, key="image_size")
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    dataset = build_dataset(name, root=root, image_size=image_size, channels=channels, num_classes=num_classes)
    split = dataset.resolve_split(split)
    labels = dataset.labels(split=split)
    where = f"dataset '{name}' split '{split}'"
    if shared_labels is not None and (indices is not None or unique_labels):
        raise ConfigError("dataset.shared_labels draws the batch itself: give it without dataset.indices and"
                          " dataset.unique_labels")
    if batch is not None and (indices is not None or shared_labels is not None):
        raise ConfigError("dataset.batch picks the batch from a fixed layout: give it without dataset.indices and"
                          " dataset.shared_labels")
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
            raise ConfigError(f"dataset.batch must be an integer >= 0, got {batch!r}")
        chosen = layout_indices(labels, batch_size=batch_size, batch=batch, num_classes=dataset.num_classes,
                                unique_labels=unique_labels, where=where)
    elif indices is None:
        chosen = sample_indices(
            labels,
            batch_size=batch_size,
            seed=seed,
            num_classes=dataset.num_classes,
            unique_labels=unique_labels,
            shared_labels=shared_labels,
            where=where,
        )
    else:
        chosen = check_indices(indices, size=len(labels), where=where)
        if len(chosen) != batch_size:
            raise ConfigError(f"got {len(chosen)} indices for batch_size={batch_size}; give exactly batch_size")
        if unique_labels and len(np.unique(labels[chosen])) < batch_size:
            raise ConfigError(f"indices {chosen.tolist()} repeat a label, but unique_labels is set")
    subset = dataset.take(chosen, split=split)
    images = _at_run_shape(subset.images, name, image_size=image_size, channels=channels)
    return Batch(
        images=images,
        labels=subset.labels.to(torch.long),
        indices=chosen.tolist(),
        num_classes=dataset.num_classes,
        split=split,
        name=name,
    )


def _at_run_shape(images: Tensor, name: str, *, image_size: int | None, channels: int | None) -> Tensor:
    """Resize and convert ``images`` of data set ``name`` where its constructor did not already do it."""
    accepted = _constructor_keywords(name)
    if image_size is not None and "image_size" not in accepted:
        images = resize(images, image_size)
    if channels is not None and "channels" not in accepted:
        images = convert_channels(images, channels)
    return images.contiguous()


PUBLIC_POOL_SIZE = 1000
"""Default cap on the public images of the no-leak reference: a seeded sample when the split is larger."""

REID_DISTRACTORS = 99
"""Default number of re-identification distractors: with the private image, 100 candidates (chance 1 %)."""


@dataclass(frozen=True)
class ImagePool:
    """Images drawn from a data set for evaluation (public images or re-identification distractors).

    Attributes:
        images: (N, C, S, S) float32 in [0, 1], at the run's image size and channels.
        split: the split they come from; ``indices`` index it (file order, ascending).
        indices: their positions in ``split``.
        available: how many images the source held before sampling (N ≤ available).
        source: one line saying where they come from, e.g. ``"fashion-mnist train split: 1000 of 60000
            (seeded sample)"``.
        extra_split: for distractors topped up from the other split, that split and its indices there.
        extra_indices: see ``extra_split``.
    """

    images: Tensor
    split: str
    indices: list[int]
    available: int
    source: str
    extra_split: str | None = None
    extra_indices: list[int] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _check_count(count: int, key: str) -> int:
    return check_positive_int(count, key=key)


def _sample(candidates: np.ndarray, count: int, seed: int, stream: str) -> np.ndarray:
    """Up to ``count`` of ``candidates``, a seeded sample when there are more; ascending (file order)."""
    if len(candidates) > count:
        candidates = numpy_rng(seed, stream).choice(candidates, size=count, replace=False)
    return np.sort(candidates).astype(np.int64)


def _describe(name: str, split: str, taken: int, available: int, what: str) -> str:
    sampled = " (seeded sample)" if taken < available else ""
    return f"{name} {split} split{what}: {taken} of {available}{sampled}"


def _without(size: int, excluded: Sequence[int]) -> np.ndarray:
    """The indices 0 … size − 1 not in ``excluded``, ascending (``np.setdiff1d`` imports ``numpy.ma``,
    10 ms of every run)."""
    keep = np.ones(size, dtype=bool)
    drop = np.asarray(list(excluded), dtype=np.int64)
    keep[drop[(drop >= 0) & (drop < size)]] = False
    return np.flatnonzero(keep).astype(np.int64)


def public_pool(
    dataset_name: str,
    *,
    split: str | None = None,
    exclude_indices: Sequence[int] = (),
    count: int = PUBLIC_POOL_SIZE,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    root: str | Path | None = None,
    num_classes: int | None = None,
) -> ImagePool:
    """The public images of a run: what an attacker knows of the data without any update (DESIGN §8).

    The data set's other split when it has one (for a private batch from ``test``, ``train``, and vice
    versa); otherwise the private batch's own split without ``exclude_indices``. Larger sources are capped
    at ``count`` images drawn from the seed's ``reference`` stream, so the pool of a run is reproducible and
    cheap; only those images are read.

    Args:
        dataset_name: registry name of the data set of the private batch.
        split: the private batch's split (None: the data set's default).
        exclude_indices: the private batch's indices in ``split``; never part of the pool.
        count: the most images to return, ≥ 1.
        seed: the run's seed.
        image_size, channels, root, num_classes: as for `load_batch` (the run's values).

    Returns:
        An `ImagePool` of (N, C, S, S) images in [0, 1], 0 ≤ N ≤ count (N = 0 when a one-split data set holds
        nothing but the private batch).

    Raises:
        ConfigError, DataNotFoundError: as `load_batch`.
    """
    count = _check_count(count, "public image count")
    dataset = build_dataset(dataset_name, root=root, image_size=image_size, channels=channels,
                            num_classes=num_classes)
    split = dataset.resolve_split(split)
    other = next((s for s in dataset.splits if s != split), None)
    if other is not None:
        source_split, what = other, ""
        candidates = np.arange(dataset.size(split=other), dtype=np.int64)
    else:
        source_split, what = split, " without the private images"
        candidates = _without(dataset.size(split=split), exclude_indices)
    chosen = _sample(candidates, count, seed, "reference")
    images = _at_run_shape(dataset.take(chosen, split=source_split).images, dataset_name,
                           image_size=image_size, channels=channels)
    return ImagePool(
        images=images,
        split=source_split,
        indices=chosen.tolist(),
        available=len(candidates),
        source=_describe(dataset_name, source_split, len(chosen), len(candidates), what),
    )


def public_images(
    dataset_name: str,
    *,
    split: str | None = None,
    exclude_indices: Sequence[int] = (),
    count: int = PUBLIC_POOL_SIZE,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    root: str | Path | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """The images of `public_pool` (same arguments): (N, C, S, S) float32 in [0, 1]."""
    return public_pool(
        dataset_name, split=split, exclude_indices=exclude_indices, count=count, seed=seed,
        image_size=image_size, channels=channels, root=root, num_classes=num_classes,
    ).images


def distractor_pool(
    dataset_name: str,
    *,
    split: str | None = None,
    exclude_indices: Sequence[int] = (),
    count: int = REID_DISTRACTORS,
    seed: int = 0,
    image_size: int | None = None,
    channels: int | None = None,
    root: str | Path | None = None,
    num_classes: int | None = None,
) -> ImagePool:
    """Re-identification distractors: other images of the private batch's split (``metrics.reid_top1``).

    ``count`` images of ``split`` without ``exclude_indices``, drawn from the seed's ``reid`` stream. When the
    split holds fewer and the data set has another split, the rest comes from that split (``extra_split``);
    otherwise the pool is simply smaller (e.g. the 10 other bundled photos), and ``source`` says so.

    Args: as `public_pool`; ``count`` ≥ 1 is the number of distractors wanted (99 → 100 candidates).

    Returns:
        An `ImagePool` of (M, C, S, S) images in [0, 1], M ≤ count.
    """
    count = _check_count(count, "reid_distractors")
    dataset = build_dataset(dataset_name, root=root, image_size=image_size, channels=channels,
                            num_classes=num_classes)
    split = dataset.resolve_split(split)
    candidates = _without(dataset.size(split=split), exclude_indices)
    chosen = _sample(candidates, count, seed, "reid")
    images = dataset.take(chosen, split=split).images
    source = _describe(dataset_name, split, len(chosen), len(candidates), " without the private images")
    other = next((s for s in dataset.splits if s != split), None)
    extra: np.ndarray | None = None
    if len(chosen) < count and other is not None:
        extra = _sample(np.arange(dataset.size(split=other), dtype=np.int64), count - len(chosen), seed, "reid")
        images = torch.cat([images, dataset.take(extra, split=other).images])
        source += f"; {len(extra)} more from the {other} split"
    return ImagePool(
        images=_at_run_shape(images, dataset_name, image_size=image_size, channels=channels),
        split=split,
        indices=chosen.tolist(),
        available=len(candidates),
        source=source,
        extra_split=None if extra is None else other,
        extra_indices=None if extra is None else extra.tolist(),
    )
