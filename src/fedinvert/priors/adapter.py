"""From a prior's [0, 1] images to the victim's input tensor: resize, convert channels, normalise.

GIFD renders BigGAN at 256 px and StyleGAN2 at 1024 px and shrinks the result to the victim's 64 px (area
averaging); a face DCGAN at 64 px may feed a 32 px grey-scale victim. One differentiable function does all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from fedinvert.errors import ConfigError
from fedinvert.observation import channel_constant

#: ITU-R BT.601 luma weights (what PIL's "L" mode uses) for RGB -> grey.
LUMA = (0.299, 0.587, 0.114)


def to_victim(
    images01: Tensor,
    *,
    image_shape: tuple[int, int, int],
    normalization: tuple[Sequence[float], Sequence[float]],
) -> Tensor:
    """Adapt a prior's images to a victim's input space. Differentiable in ``images01``.

    Resizing: an integer-factor reduction averages blocks (``area``, GIFD's choice); any other reduction uses
    bilinear interpolation with anti-aliasing; enlargement uses bilinear interpolation (``align_corners=False``).
    Channels: RGB -> grey is the BT.601 luminance, grey -> RGB repeats the channel. Then each channel is
    normalised as ``(x - mean) / std``.

    Args:
        images01: (N, C, H, W) in [0, 1], C in {1, 3}.
        image_shape: the victim's (C, H, W), e.g. ``Observation.image_shape``.
        normalization: per-channel (mean, std) the client applies, e.g. ``Observation.normalization``.

    Returns:
        (N, *image_shape), normalised, on the device and dtype of ``images01``.

    Raises:
        ConfigError: wrong input rank, a channel conversion other than 1 <-> 3, or a normalisation whose length
            does not match the victim's channels.
    """
    if images01.dim() != 4:
        raise ConfigError(f"images must be (N, C, H, W), got shape {tuple(images01.shape)}")
    channels, height, width = (int(s) for s in image_shape)
    mean, std = normalization
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        raise ConfigError(
            f"normalization must give {channels} means and {channels} positive stds, got {normalization}"
        )
    x = images01
    if channels < x.shape[1]:  # convert first: fewer channels to resize
        x = convert_channels(x, channels)
    x = resize(x, (height, width))
    x = convert_channels(x, channels)
    # cached on the device: this runs in every attack step
    m = channel_constant(mean, device=x.device, dtype=x.dtype)
    s = channel_constant(std, device=x.device, dtype=x.dtype)
    return (x - m) / s


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (N, C, H, W) to ``size`` = (h, w): area for integer reductions, else (anti-aliased) bilinear."""
    in_h, in_w = images.shape[-2:]
    out_h, out_w = size
    if (in_h, in_w) == (out_h, out_w):
        return images
    if out_h <= in_h and out_w <= in_w and in_h % out_h == 0 and in_w % out_w == 0:
        # block averages, as mode="area" computes them (bit for bit on the CPU), but through avg_pool2d, whose
        # CUDA backward is deterministic; area's (adaptive pooling) adds with atomics (docs/determinism.md)
        return F.avg_pool2d(images, kernel_size=(in_h // out_h, in_w // out_w))
    shrinks = out_h < in_h or out_w < in_w
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinks)


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """(N, C, H, W) -> (N, channels, H, W): RGB -> BT.601 grey, grey -> RGB by repetition, else unchanged."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 3 and channels == 1:
        luma = channel_constant(LUMA, device=images.device, dtype=images.dtype)
        return (images * luma).sum(dim=1, keepdim=True)
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    raise ConfigError(f"cannot convert {have}-channel images to {channels} channels (only 1 <-> 3)")
