"""Deterministic smooth random images for tests: no files, any size, any channel count.

Image ``i`` is low-frequency noise: a sum of random coarse grids (4×4, 8×8 and 16×16 cells at falling
amplitude, one per channel) upsampled bilinearly to the image size and stretched to span [0, 1]. It
depends only on ``i``, the image size and the channel count, never on a global random state.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedinvert.data.base import DATASETS, UnlabelledDataset, check_positive_int

# (grid side, amplitude) of the noise octaves
OCTAVES = ((4, 1.0), (8, 0.5), (16, 0.25))


def synthetic_image(index: int, *, image_size: int, channels: int) -> Tensor:
    """Synthetic image ``index``: (channels, image_size, image_size) float32 spanning [0, 1]."""
    rng = np.random.default_rng([int(index), 0x5EED])
    image = torch.zeros(1, channels, image_size, image_size)
    for side, amplitude in OCTAVES:
        grid = torch.from_numpy(rng.standard_normal((1, channels, side, side)).astype(np.float32))
        image += amplitude * F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=True)
    low, high = image.amin(), image.amax()
    return ((image - low) / (high - low).clamp_min(1e-12))[0]


@DATASETS.register("synthetic")
class Synthetic(UnlabelledDataset):
    """Smooth random images (channels, image_size, image_size) in [0, 1]; one split, ``test``.

    Args:
        image_size: side of the square images in pixels.
        channels: 1 (grey) or 3 (RGB).
        num_classes: size of the label space (label = index mod num_classes).
        length: number of images in the split.
    """

    name = "synthetic"

    def __init__(
        self, *, image_size: int = 32, channels: int = 3, num_classes: int = 10, length: int = 1000
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.image_size = check_positive_int(image_size, key="image_size")
        self.channels = check_positive_int(channels, key="channels")
        self.length = check_positive_int(length, key="length")

    def _count(self, split: str) -> int:
        return self.length

    def _images(self, indices: np.ndarray, split: str) -> Tensor:
        images = [synthetic_image(i, image_size=self.image_size, channels=self.channels) for i in indices.tolist()]
        if not images:
            return torch.empty(0, self.channels, self.image_size, self.image_size)
        return torch.stack(images)
