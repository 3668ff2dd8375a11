"""``face-dcgan``: the pretrained 64x64 face DCGAN whose weights ship inside the PyPI wheel gan-face-generate.

Architecture: the DCGAN generator of Radford et al. (ICLR 2016) as in the PyTorch DCGAN tutorial, z in R^100 ->
transposed convolutions 512x4x4 -> 256x8x8 -> 128x16x16 -> 64x32x32 -> 3x64x64, BatchNorm + ReLU between them
and tanh at the end. This module re-implements it (the wheel's code is never imported) with the wheel's
state-dict names, and reads the weights file with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from fedinvert.errors import DataNotFoundError
from fedinvert.priors.base import FEATURE, Prior, Variables
from fedinvert.priors.checkpoint import PathLike

WHEEL = "gan-face-generate==1.1.1"
_PACKAGE = "gan_face_generate"
_WEIGHTS_FILE = "weights.tar"


def wheel_weights_path() -> Path:
    """The weights file inside the installed gan-face-generate wheel, found without importing the package.

    Raises:
        DataNotFoundError: the wheel (or its weights file) is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise DataNotFoundError(
        f"the face-dcgan weights are not installed; run `pip install --no-deps {WHEEL}`"
        " (--no-deps keeps its unpinned torch/torchvision out) or pass weights=PATH"
    )


class FaceDCGAN(Prior):
    """The pretrained face DCGAN from gan-face-generate 1.1.1, cut into 5 stages (DESIGN section 5).

    Stages (per-sample shapes): ``z`` (100,) on the sphere, ``f1`` 512x4x4, ``f2`` 256x8x8, ``f3`` 128x16x16,
    ``f4`` 64x32x32; each feature is a block output after BatchNorm and ReLU. The last stage is rendered by the
    final transposed convolution and tanh at 3x64x64, mapped from [-1, 1] to [0, 1]. Unconditional.
    Latents are N(0, I) as in training.

    Args:
        weights: a state-dict file with the wheel's keys (``.safetensors``, or a torch file read with
            ``weights_only=True``, optionally nesting the state dict under ``netG_state_dict``). None: the
            file inside the installed wheel.

    Raises:
        DataNotFoundError: no weights given and the wheel is not installed, or ``weights`` does not exist.
        CheckpointError: the file is corrupt, unsafe to unpickle, or does not match the architecture.
    """

    name = "face-dcgan"

    def __init__(self, *, weights: PathLike | None = None) -> None:
        widths = (512, 256, 128, 64)
        super().__init__(
            stage_names=["z", "f1", "f2", "f3", "f4"],
            stage_shapes=[(100,)] + [(c, 4 * 2**i, 4 * 2**i) for i, c in enumerate(widths)],
            latent_shape=(100,),
            native_shape=(3, 64, 64),
        )
        # Same layer order as the tutorial's nn.Sequential, hence the wheel's keys: block j is main.3j (transposed
        # conv), main.3j+1 (BatchNorm), main.3j+2 (ReLU); main.12 and main.13 are the output conv and tanh.
        layers: list[nn.Module] = []
        for cin, cout in zip((100, *widths[:-1]), widths, strict=True):
            stride, padding = (1, 0) if cin == 100 else (2, 1)
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        path = Path(weights) if weights is not None else wheel_weights_path()
        self._load_or_init(path, what="face-dcgan", containers=("netG_state_dict",))

    def advance(self, k: int, variables: Mapping[str, Tensor], cond: Tensor | None) -> Variables:
        """Block k: ConvTranspose -> BatchNorm -> ReLU (block 0 reads z as a 100x1x1 map)."""
        self._check_block(k)
        if k == 0:
            x = self._require(variables, "z", 0)
            x = x.reshape(x.shape[0], 100, 1, 1)
        else:
            x = self._require(variables, FEATURE, k)
        return {FEATURE: self._run(x, 3 * k, 3 * k + 3)}

    def _render_last(self, variables: Mapping[str, Tensor], cond: Tensor | None) -> Tensor:
        h = self._require(variables, FEATURE, self.num_stages - 1)
        return (self._run(h, 12, 14) + 1.0) / 2.0

    def _run(self, x: Tensor, start: int, stop: int) -> Tensor:
        for i in range(start, stop):
            x = self.main[i](x)
        return x
