"""Image transforms shared by the data sets: array to tensor, resizing, square crops, channel conversion.

All functions take and return float32 tensors in [0, 1] of shape (N, C, H, W) unless stated otherwise.
Resizing is bilinear with anti-aliasing, so shrinking a large photo does not alias.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedinvert.errors import ConfigError

# ITU-R BT.601 luma weights, the ones PIL uses for its "L" mode.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_tensor(array: np.ndarray, *, channels_last: bool = False) -> Tensor:
    """A batch of images as a float32 tensor (N, C, H, W) in [0, 1].

    Args:
        array: (N, H, W) grey, or (N, H, W, C) with ``channels_last``, or (N, C, H, W) without it. ``uint8``
            is scaled by 1/255, ``bool`` maps to {0, 1}, floating arrays must already lie in [0, 1].
        channels_last: whether a 4-D ``array`` keeps its channels last.
    """
    data = array.astype(np.float32)  # a fresh writable copy, so cached read-only arrays stay untouched
    if array.dtype == np.uint8:
        data /= 255.0
    images = torch.from_numpy(data)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif channels_last:
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()


def resize(images: Tensor, size: int) -> Tensor:
    """``images`` (N, C, H, W) resized to (N, C, size, size), bilinear with anti-aliasing, values kept in [0, 1]."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


def square_crop(images: Tensor, size: int) -> Tensor:
    """Resize so the shorter side equals ``size``, then centre-crop to (N, C, size, size).

    The longer side is rounded to the nearest pixel; the crop drops the surplus equally on both sides
    (one pixel more on the bottom/right when the surplus is odd).
    """
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if (height, width) == (size, size):
        return images
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        images = F.interpolate(
            images, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top : top + size, left : left + size].contiguous()


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """``images`` (N, C, H, W) with C in {1, 3} converted to ``channels`` in {1, 3}.

    Grey to RGB repeats the grey channel; RGB to grey takes the BT.601 luminance.
    """
    have = int(images.shape[1])
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if have == channels:
        return images
    if have == 1:
        return images.repeat(1, 3, 1, 1)
    if have == 3:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)
    raise ConfigError(f"cannot convert images with {have} channels; only 1 (grey) and 3 (RGB) are supported")
