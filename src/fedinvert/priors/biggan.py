"""``biggan``: the BigGAN-deep generator (Brock et al., "Large Scale GAN Training for High Fidelity Natural Image
Synthesis", ICLR 2019), laid out like the public PyTorch conversion of the TF-Hub weights (pytorch-pretrained-biggan),
so its ``biggan-deep-{128,256,512}`` checkpoints load from a local path with strict keys.

Architecture, for channel width ``ch`` and class-embedding/latent size ``d`` (128 in the public models):

* ``embeddings``: linear map of a one-hot class to R^d (no bias). The conditioning vector of every block is
  ``zy = concat(z, embedding)`` in R^(2d); BigGAN-deep feeds the whole z to every block (no z chunks).
* ``generator.gen_z``: spectrally normalised linear map R^(2d) -> 4*4*16ch, reshaped from the TF layout
  (N, 4, 4, 16ch) to NCHW.
* ``generator.layers``: GenBlocks (bottleneck ratio 4: BN-ReLU-1x1 conv, BN-ReLU-[nearest x2]-3x3 conv,
  BN-ReLU-3x3 conv, BN-ReLU-1x1 conv; every BN class-conditional with gain 1 + scale(zy) and bias offset(zy);
  the skip path keeps the first half of the channels when the width halves and is upsampled with the block),
  with one self-attention layer inserted before block 8, where the resolution is 64 px.
* ``generator.bn`` (unconditional) -> ReLU -> ``generator.conv_to_rgb`` (3x3, ch -> ch) -> first 3 channels -> tanh.

Batch norms use stored statistics, one row per truncation value 0, 1/(n_stats-1), ..., 1; every weight is
spectrally normalised with its stored singular vectors (eval-mode semantics: sigma = u^T W v, no power iteration).
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

#: Channel multipliers (of ``ch``) at 4, 8, 16, ... px for the public BigGAN-deep models.
_WIDTHS = {128: (16, 16, 8, 4, 2, 1), 256: (16, 16, 8, 8, 4, 2, 1), 512: (16, 16, 8, 8, 4, 2, 1, 1)}
#: Index in the block list before which the self-attention layer sits (64 px in all public models).
ATTENTION_POSITION = 8
_CHECKPOINT_NAME = "pytorch_model.bin"

# Stored statistics are rows for truncation values 0 .. 1; a position between two rows interpolates linearly.
_Stat = tuple[int, int, float]


def deep_layers(resolution: int) -> list[tuple[bool, int, int]]:
    """The public BigGAN-deep block list ``(upsample, in multiplier, out multiplier)`` for ``resolution``.

    Each resolution step is a block that keeps the size followed by one that doubles it, as in the
    pytorch-pretrained-biggan configs (12 blocks at 256 px).
    """
    if resolution not in _WIDTHS:
        raise ConfigError(f"biggan resolution must be one of {sorted(_WIDTHS)}, got {resolution}")
    widths = _WIDTHS[resolution]
    layers: list[tuple[bool, int, int]] = []
    for here, nxt in zip(widths[:-1], widths[1:], strict=True):
        layers += [(False, here, here), (True, here, nxt)]
    return layers


def _sn_weight(weight_orig: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Spectral normalisation with stored singular vectors: W / (u^T W v) (W flattened to out x rest)."""
    sigma = torch.dot(u, torch.mv(weight_orig.reshape(weight_orig.shape[0], -1), v))
    return weight_orig / sigma


class SNLinear(nn.Module):
    """Linear layer with spectral normalisation, state names ``weight_orig``, ``weight_u``, ``weight_v``, ``bias``."""

    weight_u: Tensor
    weight_v: Tensor

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        self.weight_orig = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("weight_u", torch.zeros(out_features))
        self.register_buffer("weight_v", torch.zeros(in_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, _sn_weight(self.weight_orig, self.weight_u, self.weight_v), self.bias)


class SNConv2d(nn.Module):
    """Conv2d (stride 1) with spectral normalisation, state names as `SNLinear`."""

    weight_u: Tensor
    weight_v: Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.weight_orig = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("weight_u", torch.zeros(out_channels))
        self.register_buffer("weight_v", torch.zeros(in_channels * kernel_size * kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        weight = _sn_weight(self.weight_orig, self.weight_u, self.weight_v)
        return F.conv2d(x, weight, self.bias, padding=self.padding)


def _stored_stats(means: Tensor, variances: Tensor, stat: _Stat) -> tuple[Tensor, Tensor]:
    low, high, frac = stat
    if frac == 0.0:
        return means[low], variances[low]
    return torch.lerp(means[low], means[high], frac), torch.lerp(variances[low], variances[high], frac)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm with stored statistics and class-conditional gain ``1 + scale(zy)`` and bias ``offset(zy)``."""

    running_means: Tensor
    running_vars: Tensor

    def __init__(self, channels: int, cond_dim: int, *, n_stats: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        self.scale = SNLinear(cond_dim, channels, bias=False)
        self.offset = SNLinear(cond_dim, channels, bias=False)

    def forward(self, x: Tensor, zy: Tensor, stat: _Stat) -> Tensor:
        mean, var = _stored_stats(self.running_means, self.running_vars, stat)
        gain = 1.0 + self.scale(zy)[:, :, None, None]
        bias = self.offset(zy)[:, :, None, None]
        return (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[
            None, :, None, None
        ] * gain + bias


class OutputBatchNorm(nn.Module):
    """The unconditional BatchNorm before ``conv_to_rgb``: stored statistics, learnt ``weight`` and ``bias``."""

    running_means: Tensor
    running_vars: Tensor

    def __init__(self, channels: int, *, n_stats: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, stat: _Stat) -> Tensor:
        mean, var = _stored_stats(self.running_means, self.running_vars, stat)
        return F.batch_norm(x, mean, var, self.weight, self.bias, training=False, momentum=0.0, eps=self.eps)


class GenBlock(nn.Module):
    """BigGAN-deep residual block with a 4x channel bottleneck and class-conditional batch norms."""

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, *, upsample: bool, n_stats: int, eps: float
    ) -> None:
        super().__init__()
        middle = in_channels // 4
        self.upsample = upsample
        self.drop_channels = in_channels != out_channels
        sizes = [
            (in_channels, middle, 1),
            (middle, middle, 3),
            (middle, middle, 3),
            (middle, out_channels, 1),
        ]
        for i, (cin, cout, kernel) in enumerate(sizes):
            self.add_module(f"bn_{i}", ConditionalBatchNorm(cin, cond_dim, n_stats=n_stats, eps=eps))
            self.add_module(f"conv_{i}", SNConv2d(cin, cout, kernel))

    def forward(self, x: Tensor, zy: Tensor, stat: _Stat) -> Tensor:
        h = x
        for i in range(4):
            h = F.relu(getattr(self, f"bn_{i}")(h, zy, stat))
            if i == 1 and self.upsample:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = getattr(self, f"conv_{i}")(h)
        skip = x[:, : x.shape[1] // 2] if self.drop_channels else x
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al., 2019) with 2x2 max-pooled keys and values; ``x + gamma * attn``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.snconv1x1_theta = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_phi = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_g = SNConv2d(channels, channels // 2, 1, bias=False)
        self.snconv1x1_o_conv = SNConv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        query = self.snconv1x1_theta(x).reshape(n, c // 8, height * width)
        key = F.max_pool2d(self.snconv1x1_phi(x), 2).reshape(n, c // 8, height * width // 4)
        value = F.max_pool2d(self.snconv1x1_g(x), 2).reshape(n, c // 2, height * width // 4)
        attention = torch.softmax(torch.bmm(query.transpose(1, 2), key), dim=-1)  # (n, hw, hw/4)
        out = torch.bmm(value, attention.transpose(1, 2)).reshape(n, c // 2, height, width)
        return x + self.gamma * self.snconv1x1_o_conv(out)


class BigGANDeepTrunk(nn.Module):
    """The ``generator`` part of the checkpoint: gen_z, the block list, the output BN and conv_to_rgb."""

    def __init__(self, *, resolution: int, ch: int, z_dim: int, n_stats: int, eps: float) -> None:
        super().__init__()
        cond_dim = 2 * z_dim
        self.gen_z = SNLinear(cond_dim, 4 * 4 * 16 * ch)
        layers: list[nn.Module] = []
        for i, (up, cin, cout) in enumerate(deep_layers(resolution)):
            if i == ATTENTION_POSITION:
                layers.append(SelfAttention(ch * cin))
            layers.append(GenBlock(ch * cin, ch * cout, cond_dim, upsample=up, n_stats=n_stats, eps=eps))
        self.layers = nn.ModuleList(layers)
        self.bn = OutputBatchNorm(ch, n_stats=n_stats, eps=eps)
        self.conv_to_rgb = SNConv2d(ch, ch, 3)


class BigGANDeep(Prior):
    """BigGAN-deep as a staged, class-conditional prior (GIFD's ImageNet prior, DESIGN section 5).

    Stages follow the official GIFD split: stage 0 is ``z`` (d,), on the sphere per sample; stage k >= 1 is the
    input of ``generator.layers[k]`` (block k, or the self-attention layer), i.e. block 0 runs gen_z and
    ``layers[0]`` together. At 256 px (ch = 128) that is 13 stages: z (128), then 2048x4x4, 2048x8x8,
    2048x8x8, 1024x16x16, 1024x16x16, 1024x32x32, 1024x32x32, 512x64x64 (attention input), 512x64x64,
    512x64x64, 256x128x128, 256x128x128; the last block and the output layer render 3x256x256.
    Stage variables: ``z`` ("sphere") at stage 0; ``h`` ("l1") and ``zy`` = concat(z, class embedding)
    ("fixed", conditions every block) at stages >= 1.

    Args:
        weights: the pytorch-pretrained-biggan checkpoint (``biggan-deep-256-pytorch_model.bin``, or a folder
            holding ``pytorch_model.bin``), read with ``weights_only=True`` and loaded with strict keys; or a
            ``.safetensors`` file with the same keys.
        random_init: with ``weights=None``, build untrained random weights (tests and architecture work only).
        resolution: 128, 256 or 512 (output size; the public model of that size).
        channel_width: ``ch`` (128 in the public models; >= 4).
        z_dim: size of z and of the class embedding (128 in the public models).
        num_classes: size of the label space (1000, ImageNet).
        truncation: in (0, 1]; selects the stored BN statistics and scales latents drawn by `sample_latent`
            (GIFD uses 1). Between grid points (multiples of 1/(n_stats-1)) the two neighbouring rows are
            interpolated linearly (pytorch-pretrained-biggan weights the two neighbours the other way round, so
            off-grid images differ slightly from its output).
        n_stats: number of stored statistic rows (51).
        eps: batch-norm epsilon (1e-4).
        init_seed: seed of the random initialisation.

    Raises:
        DataNotFoundError: no weights given (and ``random_init`` is False), or no file at ``weights``.
        CheckpointError: the file is corrupt, needs unsafe unpickling, or does not match this configuration.
        ConfigError: an invalid configuration.
    """

    name = "biggan"

    def __init__(
        self,
        *,
        weights: PathLike | None = None,
        random_init: bool = False,
        resolution: int = 256,
        channel_width: int = 128,
        z_dim: int = 128,
        num_classes: int = 1000,
        truncation: float = 1.0,
        n_stats: int = 51,
        eps: float = 1e-4,
        init_seed: int = 0,
    ) -> None:
        layers = deep_layers(resolution)
        if channel_width < 4:
            raise ConfigError(f"biggan channel_width must be at least 4, got {channel_width}")
        if z_dim < 1 or num_classes < 1 or n_stats < 2:
            raise ConfigError("biggan needs z_dim >= 1, num_classes >= 1 and n_stats >= 2")
        if not 0.0 < truncation <= 1.0:
            raise ConfigError(f"biggan truncation must be in (0, 1], got {truncation}")
        if weights is None and not random_init:
            raise DataNotFoundError(
                f"biggan needs weights=PATH to a local BigGAN-deep checkpoint in the pytorch-pretrained-biggan"
                f" layout (biggan-deep-{resolution}-pytorch_model.bin, downloaded once by you; fedinvert never"
                " downloads), or random_init=True for untrained weights"
            )
        shapes = _stage_shapes(layers, channel_width, z_dim)
        super().__init__(
            stage_names=["z"] + [f"f{k}" for k in range(1, len(shapes))],
            stage_shapes=shapes,
            latent_shape=(z_dim,),
            native_shape=(3, resolution, resolution),
            num_classes=num_classes,
        )
        self.channel_width = channel_width
        self.truncation = float(truncation)
        position = self.truncation * (n_stats - 1)
        low = min(int(math.floor(position + 1e-6)), n_stats - 1)
        frac = 0.0 if abs(position - round(position)) < 1e-6 else position - low
        self._stat: _Stat = (low, min(low + 1, n_stats - 1), frac)

        self.embeddings = nn.Linear(num_classes, z_dim, bias=False)
        self.generator = BigGANDeepTrunk(
            resolution=resolution, ch=channel_width, z_dim=z_dim, n_stats=n_stats, eps=eps
        )
        what = f"biggan (resolution {resolution}, channel_width {channel_width}, z_dim {z_dim}, {num_classes} classes)"
        path = None if weights is None else Path(weights)
        if path is not None and path.is_dir():
            path = path / _CHECKPOINT_NAME
        self._load_or_init(path, what=what, containers=("state_dict",), init_seed=init_seed)

    @torch.no_grad()
    def _random_init(self) -> None:
        if self.embeddings.weight.is_meta:  # built on the meta device to inspect the layout: no values
            return
        nn.init.normal_(self.embeddings.weight)
        for module in self.modules():
            if isinstance(module, SNLinear | SNConv2d):
                nn.init.normal_(module.weight_orig)
                matrix = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
                u = F.normalize(torch.randn_like(module.weight_u), dim=0)
                v = torch.zeros_like(module.weight_v)
                for _ in range(10):  # power iteration, so that sigma is the top singular value
                    v = F.normalize(torch.mv(matrix.t(), u), dim=0)
                    u = F.normalize(torch.mv(matrix, v), dim=0)
                module.weight_u.copy_(u)
                module.weight_v.copy_(v)
            elif isinstance(module, SelfAttention):
                module.gamma.fill_(0.5)  # the trained value is non-zero; zero would hide the attention path

    # -- conditioning and latents -----------------------------------------------------------------
    def condition(self, labels: Tensor | None) -> Tensor:
        """Class embeddings (N, z_dim) of integer ``labels`` (N,); ConfigError for None or out-of-range labels."""
        if labels is None:
            raise ConfigError("biggan is class-conditional: pass labels to condition()")
        labels = self._check_labels(labels)
        return self.embeddings.weight.t()[labels]

    @torch.no_grad()
    def sample_latent(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """(n, z_dim) latents: N(0, I) at truncation 1 (as GIFD), else N(0, I) truncated to [-2, 2] times truncation."""
        if self.truncation >= 1.0:
            return super().sample_latent(n, generator=generator)
        low, high = _normal_cdf(-2.0), _normal_cdf(2.0)
        where = generator.device if generator is not None else self.device
        u = torch.rand((n, *self.latent_shape), generator=generator, device=where) * (high - low) + low
        return (torch.special.ndtri(u) * self.truncation).to(self.device)

    # -- stages ----------------------------------------------------------------------------------
    def projection_kind(self, name: str) -> ProjectionKind:
        """``z``: "sphere"; ``h``: "l1"; ``zy``: "fixed"."""
        if name == "zy":
            return "fixed"
        return super().projection_kind(name)

    def advance(self, k: int, variables: Mapping[str, Tensor], cond: Tensor | None) -> Variables:
        """Block k: gen_z and ``layers[0]`` for k = 0, else ``layers[k]``."""
        self._check_block(k)
        if k == 0:
            zy = self._conditioning(self._require(variables, "z", 0), cond)
            h = self.generator.gen_z(zy)
            # The checkpoint comes from TF: gen_z's output is (N, 4, 4, C) in memory.
            h = h.reshape(h.shape[0], 4, 4, -1).permute(0, 3, 1, 2)
        else:
            h = self._require(variables, FEATURE, k)
            zy = self._require(variables, "zy", k)
        return {FEATURE: self._layer(k, h, zy), "zy": zy}

    def _render_last(self, variables: Mapping[str, Tensor], cond: Tensor | None) -> Tensor:
        k = self.num_stages - 1
        h = self._layer(k, self._require(variables, FEATURE, k), self._require(variables, "zy", k))
        h = F.relu(self.generator.bn(h, self._stat))
        rgb = self.generator.conv_to_rgb(h)[:, :3]
        return (torch.tanh(rgb) + 1.0) / 2.0

    def _layer(self, k: int, h: Tensor, zy: Tensor) -> Tensor:
        layer = self.generator.layers[k]
        if isinstance(layer, SelfAttention):
            return layer(h)
        return layer(h, zy, self._stat)

    def _conditioning(self, z: Tensor, cond: Tensor | None) -> Tensor:
        if cond is None:
            raise ConfigError("biggan is class-conditional: pass cond=prior.condition(labels)")
        if cond.shape != (z.shape[0], self.latent_dim):
            raise ConfigError(
                f"biggan conditioning must be (N, {self.latent_dim}) for {z.shape[0]} latents, got {tuple(cond.shape)}"
            )
        return torch.cat([z, cond.to(z.dtype)], dim=1)


def _stage_shapes(layers: list[tuple[bool, int, int]], ch: int, z_dim: int) -> list[tuple[int, ...]]:
    """Per-sample shapes: z, then the input of each module of ``generator.layers`` after the first."""
    shapes: list[tuple[int, ...]] = [(z_dim,)]
    size = 4
    modules: list[tuple[bool, int]] = []
    for i, (up, _cin, cout) in enumerate(layers):
        if i == ATTENTION_POSITION:
            modules.append((False, 0))  # attention keeps the shape
        modules.append((up, cout))
    channels = 16 * ch
    for up, cout in modules[:-1]:
        if cout:
            channels = ch * cout
        size *= 2 if up else 1
        shapes.append((channels, size, size))
    return shapes


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
