"""``stylegan2``: the StyleGAN2 config-f generator (Karras et al., "Analyzing and Improving the Image Quality of
StyleGAN", CVPR 2020) in plain PyTorch, laid out like the widely used rosinality port so that its converted
checkpoints (``stylegan2-ffhq-config-f.pt``, state dict under ``g_ema``) load from a local path with strict keys.

No compiled operators: modulated convolution, the FIR up-sampling filter (upfirdn2d) and the fused bias +
leaky ReLU are written with ordinary torch functions. The modulated convolution scales the input channels by the
style, convolves with the shared weight and scales the output channels by the demodulation coefficients, which
equals convolving every sample with its own modulated weight (the "fused" form) because convolution is linear.

Architecture for output size S = 2^L: a mapping network (pixel norm + ``n_mlp`` equalised linear layers with
learning-rate multiplier 0.01 and scaled leaky ReLU) turns z into w; the synthesis network starts from a learnt
4x4 constant; block 0 is one styled 3x3 conv plus ``to_rgb1`` at 4 px; block b >= 1 is an up-sampling styled conv,
a styled conv and a ``to_rgb`` whose output is added to the up-sampled RGB of the previous blocks (``skip``).
W+ has 2L - 2 rows: block 0 reads rows 0 (conv) and 1 (to_rgb); block b reads rows 2b-1, 2b and 2b+1.
Noise map 0 feeds block 0; noise maps 2b-1 and 2b feed block b.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.errors import ConfigError, DataNotFoundError
from fedinvert.priors.base import FEATURE, Prior, ProjectionKind, Variables
from fedinvert.priors.checkpoint import PathLike

_BLUR = (1.0, 3.0, 3.0, 1.0)
_SQRT2 = math.sqrt(2.0)


# -- plain-torch replacements for the compiled operators --------------------------------------------------------
def upfirdn2d(x: Tensor, kernel: Tensor, *, up: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Up-sample by zero insertion, pad, and filter each channel with the 2-D FIR ``kernel``.

    Same semantics as StyleGAN2's ``upfirdn2d`` without down-sampling: ``pad`` = (before, after) is applied to
    both spatial axes and the kernel is flipped (true convolution).

    Args:
        x: (N, C, H, W).
        kernel: (kh, kw).
        up: integer up-sampling factor.
        pad: non-negative padding (before, after) of the up-sampled image.

    Returns:
        (N, C, H*up + pad[0] + pad[1] - kh + 1, W*up + pad[0] + pad[1] - kw + 1).
    """
    n, c, height, width = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, height, 1, width, 1), (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, height * up, width * up)
    before, after = pad
    if before < 0 or after < 0:
        raise ValueError("upfirdn2d supports non-negative padding only")
    x = F.pad(x, (before, after, before, after))
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)


def fused_leaky_relu(x: Tensor, bias: Tensor) -> Tensor:
    """``sqrt(2) * leaky_relu(x + bias, 0.2)`` with ``bias`` added along dimension 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return F.leaky_relu(x + bias.reshape(shape), 0.2) * _SQRT2


def _fir_kernel(gain: float) -> Tensor:
    taps = torch.tensor(_BLUR)
    kernel = taps[None, :] * taps[:, None]
    return kernel / kernel.sum() * gain


# -- layers (names match the rosinality state dict) -------------------------------------------------------------
class FIRFilter(nn.Module):
    """A fixed FIR filter (buffer ``kernel``), optionally with zero-insertion up-sampling by 2."""

    kernel: Tensor

    def __init__(self, *, up: int, pad: tuple[int, int], gain: float) -> None:
        super().__init__()
        self.up = up
        self.pad = pad
        self.register_buffer("kernel", _fir_kernel(gain))

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.up, pad=self.pad)


class PixelNorm(nn.Module):
    """Normalise each latent to unit root-mean-square."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weight scaled by ``lr_mul / sqrt(in)``, bias by ``lr_mul``."""

    def __init__(self, in_dim: int, out_dim: int, *, lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional demodulation and 2x up-sampling (transposed conv + blur)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            # A 3x3 transposed conv with stride 2 gives 2H+1 pixels; the 4-tap blur with padding (1, 1) gives 2H.
            self.blur = FIRFilter(up=1, pad=(1, 1), gain=4.0)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        styles = self.modulation(style)  # (N, in)
        weight = self.weight[0] * self.scale  # (out, in, k, k)
        x = x * styles[:, :, None, None]
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum over (in, k, k) of (weight * style)^2, per sample and output channel
            energy = (styles * styles) @ (weight * weight).sum(dim=(2, 3)).t()
            out = out * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        return out


class NoiseInjection(nn.Module):
    """Adds a learnt multiple (``weight``) of a one-channel noise map."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """Per-channel ``bias`` followed by the scaled leaky ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    """Modulated 3x3 conv -> noise -> bias + leaky ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, style_dim: int, *, upsample: bool = False
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) plus the up-sampled RGB of the previous blocks."""

    def __init__(self, in_channels: int, style_dim: int, *, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = FIRFilter(up=2, pad=(2, 1), gain=4.0)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    """The learnt 4x4 input of the synthesis network (parameter ``input``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.zeros(1, channels, 4, 4))


# -- the prior ----------------------------------------------------------------------------------------------------
class StyleGAN2(Prior):
    """StyleGAN2 as a staged prior, cut as in GIFD's StyleGAN2 setting (DESIGN section 5).

    Stage 0 is ``w``: the W+ latent (N, 2L-2, style_dim), one row per style input. Stage k >= 1 is the input of
    block k, i.e. the activated output of block k-1's last styled conv. At 1024 px (config-f) that is 9 stages:
    w (18x512), then 512x4x4, 512x8x8, 512x16x16, 512x32x32, 512x64x64, 256x128x128, 128x256x256, 64x512x512;
    the last block renders 3x1024x1024. GIFD's official StyleGAN2 runs use stages 0..7 of these.

    Stage variables (names and projections):

    * ``w`` ("sphere", norm per W+ row, ``sphere_dims`` = (2,)) at every stage; rows of blocks before k no
      longer affect stage k's image.
    * ``noise_i`` ("sphere", per map, (N, 1, r, r)) for the blocks k .. k + noise_blocks - 1, GIFD's window of
      optimised noise maps (noise indices below 5 + 2k). Noise maps of later blocks are not variables: ``render``
      reads the prior's stored ``noises.noise_i`` buffers for them, and `initial_variables`/`advance` also start
      each map from its stored buffer, so the noise is deterministic.
    * ``h`` ("l1"), the feature, for k >= 1.
    * ``skip`` ("fixed"), the RGB accumulated by the blocks before k (N, 3, r, r), for k >= 1. Keeping it makes
      stage-wise rendering reproduce the full forward pass (the official code drops it, following ILO).

    Images are ``(x + 1) / 2`` clamped to [0, 1] with a straight-through gradient, so pixels outside the range
    still pass gradients to the stage variables.

    Args:
        weights: a rosinality-layout checkpoint (``stylegan2-ffhq-config-f.pt`` as produced by its
            ``convert_weight.py``; the state dict may sit under ``g_ema``), read with ``weights_only=True``
            and loaded with strict keys; or a ``.safetensors`` file with the same keys. Training checkpoints that
            also pickle an ``argparse.Namespace`` are refused; re-save their ``g_ema`` first.
        random_init: with ``weights=None``, build untrained random weights (tests and architecture work only).
        size: output resolution, a power of two >= 8 (1024 for FFHQ config-f).
        style_dim: size of z and w (512).
        n_mlp: mapping-network depth (8).
        channel_multiplier: 2 for config-f.
        max_channels: channel cap of the low-resolution blocks (512; smaller for tests).
        noise_blocks: how many blocks' noise maps stage k optimises, starting at block k (3, as GIFD).
        init_seed: seed of the random initialisation.

    Raises:
        DataNotFoundError: no weights given (and ``random_init`` is False), or no file at ``weights``.
        CheckpointError: the file is corrupt, needs unsafe unpickling, or does not match this configuration.
        ConfigError: an invalid configuration.
    """

    name = "stylegan2"

    def __init__(
        self,
        *,
        weights: PathLike | None = None,
        random_init: bool = False,
        size: int = 1024,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        max_channels: int = 512,
        noise_blocks: int = 3,
        init_seed: int = 0,
    ) -> None:
        if size < 8 or size & (size - 1):
            raise ConfigError(f"stylegan2 size must be a power of two >= 8, got {size}")
        if min(style_dim, n_mlp, channel_multiplier, max_channels, noise_blocks) < 1:
            raise ConfigError(
                "stylegan2 style_dim, n_mlp, channel_multiplier, max_channels and noise_blocks must be >= 1"
            )
        if weights is None and not random_init:
            raise DataNotFoundError(
                "stylegan2 needs weights=PATH to a local rosinality-layout checkpoint (e.g. stylegan2-ffhq-config-f.pt"
                " converted with rosinality's convert_weight.py; fedinvert never downloads), or random_init=True"
                " for untrained weights"
            )
        log_size = int(math.log2(size))
        num_blocks = log_size - 1
        n_latent = 2 * log_size - 2

        def channels(resolution: int) -> int:
            return min(max_channels, 16 * channel_multiplier * 1024 // resolution)

        resolutions = [4 * 2**b for b in range(num_blocks)]
        super().__init__(
            stage_names=["w"] + [f"f{k}" for k in range(1, num_blocks)],
            stage_shapes=[(n_latent, style_dim)] + [(channels(r), r, r) for r in resolutions[:-1]],
            latent_shape=(n_latent, style_dim),
            native_shape=(3, size, size),
        )
        self.num_blocks = num_blocks
        self.n_latent = n_latent
        self.noise_blocks = noise_blocks
        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(style_dim, style_dim, lr_mul=0.01, activation=True) for _ in range(n_mlp)),
        )
        self.input = ConstantInput(channels(4))
        self.conv1 = StyledConv(channels(4), channels(4), style_dim)
        self.to_rgb1 = ToRGB(channels(4), style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for previous, resolution in zip(resolutions[:-1], resolutions[1:], strict=True):
            self.convs.append(StyledConv(channels(previous), channels(resolution), style_dim, upsample=True))
            self.convs.append(StyledConv(channels(resolution), channels(resolution), style_dim))
            self.to_rgbs.append(ToRGB(channels(resolution), style_dim))
        self.noises = nn.Module()
        for i in range(2 * self.num_blocks - 1):
            side = resolutions[(i + 1) // 2]
            self.noises.register_buffer(f"noise_{i}", torch.zeros(1, 1, side, side))

        what = f"stylegan2 (size {size}, style_dim {style_dim}, n_mlp {n_mlp}, channel_multiplier {channel_multiplier})"
        path = None if weights is None else Path(weights)
        self._load_or_init(path, what=what, containers=("g_ema", "state_dict"), init_seed=init_seed)

    @torch.no_grad()
    def _random_init(self) -> None:
        if self.input.input.is_meta:  # built on the meta device to inspect the layout: no values
            return
        for module in self.modules():
            if isinstance(module, EqualLinear):
                module.weight.normal_().div_(module.lr_mul)
            elif isinstance(module, ModulatedConv2d):
                module.weight.normal_()
                module.modulation.bias.fill_(1.0)
            elif isinstance(module, NoiseInjection):
                module.weight.fill_(0.1)  # trained values are non-zero; zero would cut the noise maps off
        self.input.input.normal_()
        for buffer in self.noises.buffers():
            buffer.normal_()

    # -- latents ---------------------------------------------------------------------------------
    def mapping(self, z: Tensor) -> Tensor:
        """The mapping network: z (N, style_dim) -> w (N, style_dim)."""
        return self.style(z)

    @torch.no_grad()
    def sample_latent(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """W+ latents (n, n_latent, style_dim): w = mapping(z) for z ~ N(0, I), the same w in every row."""
        z = self._standard_normal((n, self.latent_dim), generator=generator)
        return self.mapping(z)[:, None, :].expand(-1, self.n_latent, -1).contiguous()

    # -- stage variables --------------------------------------------------------------------------
    def noise_indices(self, block: int) -> list[int]:
        """Indices of the noise maps that block ``block`` reads."""
        return [0] if block == 0 else [2 * block - 1, 2 * block]

    def window(self, k: int) -> list[int]:
        """Indices of the noise maps that are stage variables of stage k."""
        last = min(k + self.noise_blocks, self.num_blocks)
        return [i for block in range(k, last) for i in self.noise_indices(block)]

    def initial_variables(self, latent: Tensor, cond: Tensor | None) -> Variables:
        """``{"w": latent}`` plus the noise maps of the first ``noise_blocks`` blocks (stored buffers, per sample)."""
        self._check_latent(latent)
        variables: Variables = {"w": latent}
        self._add_window(variables, 0, {}, latent.shape[0])
        return variables

    def projection_kind(self, name: str) -> ProjectionKind:
        """``w`` and ``noise_i``: "sphere"; ``h``: "l1"; ``skip``: "fixed"."""
        if name == "w" or self._noise_index(name) is not None:
            return "sphere"
        if name == "skip":
            return "fixed"
        if name == FEATURE:
            return "l1"
        raise ConfigError(
            f"stylegan2 has no stage variable {name!r}; it has w, h, skip and noise_0..noise_{2 * self.num_blocks - 2}"
        )

    def sphere_dims(self, name: str) -> tuple[int, ...]:
        """(2,) for ``w`` (per W+ row), (1, 2, 3) for a noise map (per map)."""
        if name == "w":
            return (2,)
        if self._noise_index(name) is not None:
            return (1, 2, 3)
        return super().sphere_dims(name)

    def advance(self, k: int, variables: Mapping[str, Tensor], cond: Tensor | None) -> Variables:
        """Block k; carries ``w`` and the noise maps of the next window, adds ``h`` and ``skip``."""
        self._check_block(k)
        h, skip = self._block(k, variables)
        w = variables["w"]
        following: Variables = {"w": w, FEATURE: h, "skip": skip}
        self._add_window(following, k + 1, variables, w.shape[0])
        return following

    def _render_last(self, variables: Mapping[str, Tensor], cond: Tensor | None) -> Tensor:
        _, rgb = self._block(self.num_blocks - 1, variables)
        image = (rgb + 1.0) / 2.0
        return image + (image.clamp(0.0, 1.0) - image).detach()

    def _block(self, b: int, variables: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        w = self._require(variables, "w", b)
        if w.dim() != 3 or tuple(w.shape[1:]) != self.latent_shape:
            raise ConfigError(
                f"stylegan2 w must be (N, {self.n_latent}, {self.latent_dim}), got {tuple(w.shape)}"
            )

        def noise(i: int) -> Tensor:
            return variables.get(f"noise_{i}", getattr(self.noises, f"noise_{i}"))

        if b == 0:
            x = self.input.input.expand(w.shape[0], -1, -1, -1)
            h = self.conv1(x, w[:, 0], noise(0))
            return h, self.to_rgb1(h, w[:, 1], None)
        h = self._require(variables, FEATURE, b)
        skip = self._require(variables, "skip", b)
        first, second = self.noise_indices(b)
        h = self.convs[2 * b - 2](h, w[:, 2 * b - 1], noise(first))
        h = self.convs[2 * b - 1](h, w[:, 2 * b], noise(second))
        return h, self.to_rgbs[b - 1](h, w[:, 2 * b + 1], skip)

    def _add_window(self, variables: Variables, k: int, source: Mapping[str, Tensor], n: int) -> None:
        for i in self.window(k):
            key = f"noise_{i}"
            if key in source:
                variables[key] = source[key]
            else:
                variables[key] = getattr(self.noises, key).expand(n, -1, -1, -1).clone()

    def _noise_index(self, name: str) -> int | None:
        prefix = "noise_"
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            index = int(name[len(prefix) :])
            if index < 2 * self.num_blocks - 1:
                return index
        return None
