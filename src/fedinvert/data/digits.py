"""The UCI handwritten digits bundled with scikit-learn (``sklearn.datasets.load_digits``).

1,797 grey 8×8 images of the digits 0–9 with their real labels. The raw values 0–16 (counts of set
pixels in 4×4 blocks of the original 32×32 bitmaps) are divided by 16 to lie in [0, 1].
"""

from __future__ import annotations

import functools

import numpy as np
from torch import Tensor

from fedinvert.data.base import DATASETS, Dataset, read_only
from fedinvert.data.transforms import to_tensor

MAX_VALUE = 16.0


@functools.lru_cache(maxsize=1)
def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images, labels): read-only (1797, 8, 8) float32 in [0, 1] and (1797,) int64 in 0..9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / MAX_VALUE
    return read_only(images), read_only(np.asarray(bunch.target, dtype=np.int64))


@DATASETS.register("digits")
class Digits(Dataset):
    """scikit-learn's digits: (1, 8, 8) grey images in [0, 1], 10 classes, one split ``test`` (all 1,797)."""

    name = "digits"

    def __init__(self) -> None:
        self.num_classes = 10

    def labels(self, *, split: str | None = None) -> np.ndarray:
        self.resolve_split(split)
        return read_digits()[1]

    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        return to_tensor(read_digits()[0][indices])
