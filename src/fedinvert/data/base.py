"""The dataset registry, the `ImageSet` record and the `Dataset` base class every data set subclasses.

A data set hands out one split at a time. Its labels are cheap (a NumPy array of the whole split); its
images are fetched only for the indices asked for, so a batch of four from a 60,000-image split does not
turn the whole split into float tensors.
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from fedinvert.errors import ConfigError
from fedinvert.registry import Registry


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of (part of) one split.

    Attributes:
        images: (N, C, H, W) float32 in [0, 1], un-normalised.
        labels: (N,) int64 class indices in [0, num_classes).
        num_classes: size of the label space.
        name: registry name of the data set the images come from.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"ImageSet.images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageSet.labels must be ({self.images.shape[0]},), got shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])


class Dataset(abc.ABC):
    """A data set with one or more named splits, indexed in file order.

    Subclasses set ``name``, ``splits`` and ``default_split``, set ``self.num_classes`` in their
    constructor, and implement `labels` and `_images`. Data sets without a train/test division expose all
    their images as the single split ``"test"``.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("test",)
    default_split: ClassVar[str] = "test"
    num_classes: int

    def resolve_split(self, split: str | None) -> str:
        """``split`` checked against the data set's splits; ``None`` means the default split."""
        if split is None:
            return self.default_split
        if split not in self.splits:
            raise ConfigError(
                f"dataset '{self.name}' has no split '{split}'; its splits: {', '.join(self.splits)}"
            )
        return split

    @abc.abstractmethod
    def labels(self, *, split: str | None = None) -> np.ndarray:
        """All labels of ``split`` in file order: (N,) int64, read-only."""

    @abc.abstractmethod
    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        """Images at ``indices`` (valid, int64) of ``split``: (len(indices), C, H, W) float32 in [0, 1]."""

    def size(self, *, split: str | None = None) -> int:
        """Number of images in ``split``."""
        return len(self.labels(split=split))

    def take(self, indices: Iterable[int], *, split: str | None = None) -> ImageSet:
        """The images and labels at ``indices`` of ``split``, in the order given.

        Raises:
            ConfigError: an index is outside ``[0, size)`` (negative indices are not wrapped around).
        """
        split = self.resolve_split(split)
        labels = self.labels(split=split)
        idx = check_indices(indices, size=len(labels), where=f"dataset '{self.name}' split '{split}'")
        images = self._images(idx, split)
        return ImageSet(
            images=images,
            labels=torch.as_tensor(labels[idx], dtype=torch.long),
            num_classes=self.num_classes,
            name=self.name,
        )

    def load(self, *, split: str | None = None) -> ImageSet:
        """The whole of ``split`` at the data set's native size, as one `ImageSet`."""
        return self.take(range(self.size(split=split)), split=split)


DATASETS: Registry[Dataset] = Registry("dataset")


class UnlabelledDataset(Dataset):
    """A data set without class labels: image ``i`` gets label ``i mod num_classes`` (DESIGN §12)."""

    def __init__(self, *, num_classes: int = 10) -> None:
        self.num_classes = check_positive_int(num_classes, key="num_classes")

    @abc.abstractmethod
    def _count(self, split: str) -> int:
        """Number of images in ``split``."""

    def labels(self, *, split: str | None = None) -> np.ndarray:
        return read_only(np.arange(self._count(self.resolve_split(split)), dtype=np.int64) % self.num_classes)


def check_indices(indices: Iterable[int], *, size: int, where: str) -> np.ndarray:
    """``indices`` as an int64 array after checking each lies in ``[0, size)``; ConfigError naming the first bad one."""
    values = list(indices)
    try:
        idx = np.array([operator.index(i) for i in values], dtype=np.int64)
    except TypeError:
        raise ConfigError(f"indices for {where} must be integers, got {values!r}") from None
    bad = idx[(idx < 0) | (idx >= size)]
    if bad.size:
        raise ConfigError(
            f"index {int(bad[0])} is out of range for {where}, which has {size} images (valid: 0..{size - 1})"
        )
    return idx


def check_positive_int(value: object, *, key: str) -> int:
    """``value`` as an int >= 1; ConfigError naming ``key`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return int(value)


def file_key(path: str | Path) -> tuple[str, int, int]:
    """(path, mtime in ns, size in bytes): a cache key that changes when the file is replaced or edited."""
    stat = Path(path).stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def read_only(array: np.ndarray) -> np.ndarray:
    """``array`` marked read-only, so a cached copy cannot be changed by a caller."""
    array.setflags(write=False)
    return array
