"""``fashion``: our own small class-conditional BigGAN-style generator for Fashion-MNIST (DESIGN section 6).

Trained by `fedinvert.priors.training` (``fedinvert train-prior``) on the Fashion-MNIST train split padded from
28x28 to 32x32; the exported EMA generator ships as package data in ``priors/weights/fashion.safetensors``.

Architecture (`FashionGenerator`, after Brock et al., "Large Scale GAN Training for High Fidelity Natural Image
Synthesis", ICLR 2019, at a toy scale), for latent size d = 128 and class-embedding size e = 128:

* ``embed``: a shared class embedding, 10 classes -> R^e. It is the conditioning tensor of every block, so
  ``condition(labels)`` returns it (N, e).
* ``stem``: linear R^d -> 128*4*4, reshaped to (N, 128, 4, 4).
* ``blocks``: three residual up-blocks 128 -> 64 (8x8), 64 -> 32 (16x16), 32 -> 16 (32x32); each is
  CBN-ReLU-[nearest x2]-3x3 conv, CBN-ReLU-3x3 conv, plus a nearest x2 + 1x1 conv skip path. CBN is batch norm
  without affine parameters followed by the class-conditional gain ``1 + gain(e)`` and bias ``bias(e)``.
* ``out_bn`` (unconditional batch norm) -> ReLU -> ``out_conv`` (3x3, 16 -> 1) -> tanh, mapped to [0, 1].

About 0.51 M parameters (widths chosen so that a step takes about a second on one CPU thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.errors import ConfigError, DataNotFoundError
from fedinvert.priors.base import FEATURE, Prior, Variables, seeded_init
from fedinvert.priors.checkpoint import PathLike, load_strict, read_state_dict

#: The committed weights (package data) and their metadata.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "fashion.safetensors"
METADATA_FILE = WEIGHTS_DIR / "fashion.json"

#: Channels of the 4x4 stem output and of the three up-blocks' outputs (8x8, 16x16, 32x32).
CHANNELS = (128, 64, 32, 16)
Z_DIM = 128
EMBED_DIM = 128
NUM_CLASSES = 10
RESOLUTION = 32

TRAIN_HINT = (
    "train it with `fedinvert train-prior --out DIR` (hours on a CPU; it resumes when restarted) and export it"
    " with `fedinvert train-prior --out DIR --export-only --export-to src/fedinvert/priors/weights`,"
    " or pass weights=PATH"
)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without affine parameters, then the class-conditional gain ``1 + gain(c)`` and bias ``bias(c)``.

    Args:
        channels: feature channels C.
        cond_dim: size of the conditioning vector c.

    Input (N, C, H, W) and c (N, cond_dim); output (N, C, H, W).
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels, bias=False)
        self.bias = nn.Linear(cond_dim, channels, bias=False)
        # Zero start: every class begins with the identity affine map, so training starts from a plain BN.
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gain = 1.0 + self.gain(cond)
        bias = self.bias(cond)
        return self.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]


class UpBlock(nn.Module):
    """BigGAN residual up-block: CBN-ReLU-up-conv3, CBN-ReLU-conv3, plus up-conv1 on the skip path; 2x the size."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, cond_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn2 = ConditionalBatchNorm2d(out_channels, cond_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class FashionGenerator(nn.Module):
    """The trainable generator behind the ``fashion`` prior (see the module docstring).

    An ordinary module (``train()`` switches its batch norms to batch statistics), so the training script can
    use it directly; `FashionPrior` wraps a frozen copy. Its ``state_dict`` is the layout of
    ``fashion.safetensors``.

    Args:
        z_dim: latent size d.
        embed_dim: class-embedding size e.
        num_classes: number of classes.
        channels: widths of the 4x4 stem and of the 8x8, 16x16, 32x32 block outputs.
    """

    def __init__(
        self,
        *,
        z_dim: int = Z_DIM,
        embed_dim: int = EMBED_DIM,
        num_classes: int = NUM_CLASSES,
        channels: tuple[int, int, int, int] = CHANNELS,
    ) -> None:
        super().__init__()
        if z_dim < 1 or embed_dim < 1 or num_classes < 2 or len(channels) != 4 or min(channels) < 1:
            raise ConfigError(
                "fashion generator needs z_dim >= 1, embed_dim >= 1, num_classes >= 2 and four positive widths"
            )
        self.z_dim = z_dim
        self.channels = tuple(channels)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.stem = nn.Linear(z_dim, channels[0] * 16)
        self.blocks = nn.ModuleList(UpBlock(channels[i], channels[i + 1], embed_dim) for i in range(3))
        self.out_bn = nn.BatchNorm2d(channels[3])
        self.out_conv = nn.Conv2d(channels[3], 1, 3, padding=1)

    def run_stem(self, z: Tensor) -> Tensor:
        """(N, d) latents -> (N, channels[0], 4, 4)."""
        return self.stem(z).reshape(z.shape[0], self.channels[0], 4, 4)

    def run_output(self, h: Tensor) -> Tensor:
        """(N, channels[3], 32, 32) -> images (N, 1, 32, 32) in [0, 1]."""
        return (torch.tanh(self.out_conv(F.relu(self.out_bn(h)))) + 1.0) / 2.0

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """Images (N, 1, 32, 32) in [0, 1] from latents (N, d) and integer labels (N,)."""
        cond = self.embed(labels)
        h = self.run_stem(z)
        for block in self.blocks:
            h = block(h, cond)
        return self.run_output(h)


class FashionPrior(Prior):
    """The ``fashion`` prior: `FashionGenerator` with our committed weights, cut into 5 stages.

    Stages (per-sample shapes): ``z`` (128,) on the sphere, ``f1`` 128x4x4 (stem output), ``f2`` 64x8x8,
    ``f3`` 32x16x16, ``f4`` 16x32x32 (residual sums of the three up-blocks). Each block normalises and activates
    its input first (pre-activation residual blocks), so a stage is a block's output as the next block reads it.
    The last stage is rendered by the output batch norm, ReLU, 3x3 conv and tanh at 1x32x32, mapped to [0, 1].
    Class-conditional over the 10 Fashion-MNIST classes: ``condition(labels)`` is the class embedding (N, 128),
    read by every block, so ``forward_from`` needs no ``latent=``. Latents are N(0, I) as in training.

    Args:
        weights: a ``.safetensors`` file with `FashionGenerator`'s keys (e.g. exported by
            ``fedinvert train-prior --export-only``). None: the committed ``priors/weights/fashion.safetensors``.
        random_init: with ``weights=None``, build untrained random weights instead (tests only).
        init_seed: seed of the random initialisation.

    Raises:
        DataNotFoundError: the weights file is missing (the message says how to train it).
        CheckpointError: the file is corrupt or does not match the architecture.
    """

    name = "fashion"

    def __init__(
        self, *, weights: PathLike | None = None, random_init: bool = False, init_seed: int = 0
    ) -> None:
        channels = CHANNELS
        super().__init__(
            stage_names=["z", "f1", "f2", "f3", "f4"],
            stage_shapes=[(Z_DIM,)] + [(c, 4 * 2**i, 4 * 2**i) for i, c in enumerate(channels)],
            latent_shape=(Z_DIM,),
            native_shape=(1, RESOLUTION, RESOLUTION),
            num_classes=NUM_CLASSES,
        )
        with seeded_init(init_seed):
            self.generator = FashionGenerator()
            if weights is None and random_init:
                # The conditional gains and biases start at zero for training; random ones make the untrained
                # prior depend on the class, as a trained one does.
                for module in self.generator.modules():
                    if isinstance(module, ConditionalBatchNorm2d):
                        nn.init.normal_(module.gain.weight, std=0.1)
                        nn.init.normal_(module.bias.weight, std=0.1)
        if weights is None and random_init:
            self.freeze()
            return
        path = Path(weights).expanduser() if weights is not None else WEIGHTS_FILE
        if not path.is_file():
            if weights is None:
                raise DataNotFoundError(f"the fashion prior's weights are not at {path}; {TRAIN_HINT}")
            raise DataNotFoundError(f"fashion prior weights: no file at {path}")
        state = read_state_dict(path, what="fashion prior weights")
        load_strict(self.generator, state, what="fashion generator", source=str(path))
        self.freeze()

    def condition(self, labels: Tensor | None) -> Tensor:
        """Class embeddings (N, 128) of integer ``labels`` (N,); ConfigError for None or out-of-range labels."""
        if labels is None:
            raise ConfigError("fashion is class-conditional: pass labels to condition()")
        return self.generator.embed(self._check_labels(labels))

    def advance(self, k: int, variables: Mapping[str, Tensor], cond: Tensor | None) -> Variables:
        """Block k: the stem (linear + reshape) for k = 0, else up-block k."""
        self._check_block(k)
        if k == 0:
            return {FEATURE: self.generator.run_stem(self._require(variables, "z", 0))}
        h = self._require(variables, FEATURE, k)
        return {FEATURE: self.generator.blocks[k - 1](h, self._cond(cond))}

    def _render_last(self, variables: Mapping[str, Tensor], cond: Tensor | None) -> Tensor:
        h = self._require(variables, FEATURE, self.num_stages - 1)
        return self.generator.run_output(h)

    @staticmethod
    def _cond(cond: Tensor | None) -> Tensor:
        if cond is None:
            raise ConfigError("fashion is class-conditional: pass cond=prior.condition(labels)")
        return cond
