"""Perceptual distances: ST-LPIPS from the weights in the ``stlpips-pytorch`` wheel, LPIPS from local weights.

LPIPS (Zhang et al., 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") compares
two images through an ImageNet network: at five ReLU taps the feature vector of every position is scaled to
unit length, the squared difference is weighted per channel by a learned linear head (a 1×1 convolution
without bias), averaged over positions, and the five numbers are summed. ST-LPIPS (Ghildyal & Liu, 2022,
"Shift-tolerant Perceptual Similarity Metric") is the same recipe on an AlexNet made shift tolerant: the first
convolution has stride 1 and every downsampling is a 3×3 binomial blur with stride 2 after reflection padding
by 2 (blur pooling), with its own trained trunk and heads. Its numbers are ST-LPIPS, **not comparable with
published LPIPS values**.

fedinvert defines these networks itself and only reads weights: the ``stlpips-pytorch==0.0.2`` wheel (BSD-2,
installed with ``pip install --no-deps stlpips-pytorch==0.0.2``, the ``[lpips]`` extra) ships
``weights/vST0.0/alex_shift_tolerant.pth``, a complete state dict; its Python code, which imports
torchvision, is never imported. Weights are read with ``torch.load(weights_only=True)`` (or safetensors) and
loaded strictly. A ``.pth`` file is read once: its tensors are kept as a safetensors copy under
``$FEDINVERT_CACHE/perceptual`` (reading the wheel's pickle took 10 ms of every run, the copy 1 ms), keyed by the
file's path, size and modification time.

Inputs are (B, C, H, W) images in [0, 1], C = 1 (repeated to RGB) or 3; they are mapped to [−1, 1] and then
through the networks' input scaling. Images with a side under ``MIN_SIDE`` (32) pixels are first resized
bilinearly to ``MIN_SIDE`` (the shift-tolerant trunk needs at least 21 pixels, AlexNet's about 31).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedinvert.cache import cache_root, save_tensors
from fedinvert.data.base import file_key
from fedinvert.errors import CheckpointError, ConfigError

Trunk = Literal["alex", "vgg", "alex-st"]

MIN_SIDE = 32
"""Images with a side shorter than this are resized (bilinear) to it before the network sees them."""

ST_LPIPS_PACKAGE = "stlpips_pytorch"
ST_LPIPS_FILE = "weights/vST0.0/alex_shift_tolerant.pth"

# LPIPS' input scaling after mapping [0, 1] to [-1, 1]: (x - shift) / scale, per RGB channel
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class BlurPool(nn.Module):
    """Anti-aliased downsampling: reflection padding by 2 on every side, a 3×3 binomial filter
    ([1, 2, 1] ⊗ [1, 2, 1] / 16) per channel, stride 2 (the shift-tolerant network's variant)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.filt: Tensor
        self.register_buffer("filt", (kernel / kernel.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class _LoadedConv2d(nn.Conv2d):
    """A convolution left uninitialised, for a network whose every weight is loaded next (`_load_cached`):
    AlexNet's random initialisation is 11 ms of every run's evaluation."""

    def reset_parameters(self) -> None:
        pass


def _features(trunk: Trunk, *, initialise: bool = True) -> tuple[nn.Sequential, tuple[int, ...], tuple[int, ...]]:
    """(layers numbered as in the weight files, indices whose outputs are the five taps, tap channels)."""
    conv_type = nn.Conv2d if initialise else _LoadedConv2d

    def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0) -> nn.Conv2d:
        return conv_type(cin, cout, kernel, stride=stride, padding=padding)

    relu = nn.ReLU
    if trunk == "alex":
        layers: list[nn.Module] = [
            _conv(3, 64, 11, stride=4, padding=2), relu(), nn.MaxPool2d(3, 2),
            _conv(64, 192, 5, padding=2), relu(), nn.MaxPool2d(3, 2),
            _conv(192, 384, 3, padding=1), relu(),
            _conv(384, 256, 3, padding=1), relu(),
            _conv(256, 256, 3, padding=1), relu(),
        ]
        return nn.Sequential(*layers), (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)
    if trunk == "alex-st":
        layers = [
            _conv(3, 64, 11, padding=2), BlurPool(64), relu(),
            nn.MaxPool2d(3, 1), BlurPool(64), _conv(64, 192, 5, padding=2), relu(),
            nn.MaxPool2d(3, 1), BlurPool(192), _conv(192, 384, 3, padding=1), relu(),
            _conv(384, 256, 3, padding=1), relu(),
            _conv(256, 256, 3, padding=1), relu(),
        ]
        return nn.Sequential(*layers), (2, 6, 10, 12, 14), (64, 192, 384, 256, 256)
    if trunk == "vgg":
        layers = []
        cin = 3
        for block, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
            if block:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(convs):
                layers += [_conv(cin, width, 3, padding=1), relu()]
                cin = width
        return nn.Sequential(*layers), (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)
    raise ValueError(f"unknown perceptual trunk {trunk!r}; choose alex, vgg or alex-st")


class PerceptualDistance(nn.Module):
    """LPIPS-style distance: unit-normalised features at five taps, per-channel weighted squared
    differences, spatial mean, sum over taps.

    Args:
        trunk: ``"alex"`` / ``"vgg"`` (LPIPS' AlexNet and VGG-16) or ``"alex-st"`` (ST-LPIPS' shift-tolerant
            AlexNet). Weights start random; load them with `load_weights`.
        initialise: False leaves the convolutions' weights uninitialised, for a network whose weights are all
            loaded at once (a strict `load_weights` sets every one).
    """

    def __init__(self, trunk: Trunk, *, initialise: bool = True) -> None:
        super().__init__()
        self.trunk = trunk
        self.features, self.taps, channels = _features(trunk, initialise=initialise)
        head_type = nn.Conv2d if initialise else _LoadedConv2d
        self.heads = nn.ModuleList(head_type(c, 1, 1, bias=False) for c in channels)
        self.shift: Tensor
        self.scale: Tensor
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def prepare(self, images: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1], C ∈ {1, 3} → the network's input (RGB, ≥ ``MIN_SIDE`` px, LPIPS scaling)."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected (B, 1 or 3, H, W) images, got {tuple(images.shape)}")
        x = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
        height, width = x.shape[-2:]
        if min(height, width) < MIN_SIDE:
            factor = MIN_SIDE / min(height, width)
            size = (max(MIN_SIDE, round(height * factor)), max(MIN_SIDE, round(width * factor)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return (2.0 * x - 1.0 - self.shift) / self.scale

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance per image pair: (B,) ≥ 0, 0 for identical images. ``a``, ``b``: (B, C, H, W) in [0, 1]."""
        if a.shape != b.shape:
            raise ValueError(f"expected two batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        taps = self._taps(self.prepare(torch.cat([a, b])))  # both batches in one pass through the trunk
        return sum(
            (head((tap[: len(a)] - tap[len(a):]).square()).mean(dim=(1, 2, 3)) for head, tap in zip(self.heads, taps, strict=True)),
            start=torch.zeros(len(a), device=a.device),
        )

    def load_weights(self, state: Mapping[str, Tensor], *, source: str) -> PerceptualDistance:
        """Load a state dict in the ``lpips`` / ``stlpips`` layout (``net.sliceK.I.*``, ``linK.model.1.weight``,
        ``scaling_layer.*``) or with torchvision's ``features.I.*`` trunk keys; strict: every weight of this
        network must be given and nothing else. Returns ``self``.

        Raises:
            CheckpointError: keys or shapes do not fit (the message names ``source``).
        """
        mapped: dict[str, Tensor] = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] == "net" and len(parts) > 2 and parts[1].startswith("slice"):
                new = "features." + ".".join(parts[2:])
            elif parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[1:] == ["model", "1", "weight"]:
                new = f"heads.{parts[0][3:]}.weight"
            elif parts[0] == "lins" and parts[2:] == ["model", "1", "weight"]:
                new = f"heads.{parts[1]}.weight"
            elif parts[0] == "scaling_layer" and len(parts) == 2:
                new = parts[1]
            else:
                new = key
            if new in mapped and not torch.equal(mapped[new], value):
                raise CheckpointError(f"{source}: two different tensors for {new}")
            mapped[new] = value.float() if value.is_floating_point() else value
        mapped.setdefault("shift", self.shift)
        mapped.setdefault("scale", self.scale)
        try:
            self.load_state_dict(mapped, strict=True, assign=True)  # the given tensors become the weights: no copy
        except RuntimeError as err:
            raise CheckpointError(
                f"{source} does not fit the {self.trunk} perceptual network: {str(err).splitlines()[-1].strip()}"
            ) from None
        return self.eval()


def _read_state(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on foreign or corrupt files; all mean the same here
        raise CheckpointError(f"{path} is not a readable weight file ({type(err).__name__})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def _infer_trunk(state: Mapping[str, Tensor], source: str) -> Trunk:
    first = next((v for k, v in state.items() if k.endswith("0.weight") and v.dim() == 4 and v.shape[1] == 3), None)
    blurred = any(k.endswith(".filt") for k in state)
    if first is not None and tuple(first.shape[-2:]) == (11, 11):
        return "alex-st" if blurred else "alex"
    if first is not None and tuple(first.shape[-2:]) == (3, 3) and not blurred:
        return "vgg"
    raise CheckpointError(
        f"{source}: not LPIPS AlexNet/VGG-16 or ST-LPIPS AlexNet weights (no 11×11 or 3×3 RGB first layer)"
    )


CONVERTED_LAYOUT = 1
"""Version of the cached safetensors copies of ``.pth`` weight files; part of their key."""


def _converted_path(path: Path, mtime_ns: int, size: int) -> Path:
    key = hashlib.sha256(f"{CONVERTED_LAYOUT}|{path}|{size}|{mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "perceptual" / f"{path.stem}-{key}.safetensors"


def _network(state: Mapping[str, Tensor], source: str) -> PerceptualDistance:
    net = PerceptualDistance(_infer_trunk(state, source), initialise=False).load_weights(state, source=source)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> PerceptualDistance:
    """The network in ``path``; a ``.pth`` file through its safetensors copy, written once the file has loaded
    (a missing, partial or foreign copy is ignored and the file read again)."""
    from safetensors.torch import load_file

    source = Path(path)
    if source.suffix == ".safetensors":
        return _network(_read_state(source), path)
    copy = _converted_path(source, mtime_ns, size)
    with contextlib.suppress(Exception):  # safetensors raises several types for a file that is not its own
        return _network(load_file(str(copy)), path)
    state = _read_state(source)
    net = _network(state, path)
    with contextlib.suppress(OSError, RuntimeError, ValueError):  # no copy (a read-only cache): read it next time
        save_tensors(copy, {k: v.contiguous() for k, v in state.items()})
    return net


def load_network(path: str | Path) -> PerceptualDistance:
    """The perceptual network stored in ``path`` (.pth read with ``weights_only=True``, or .safetensors); the
    trunk (AlexNet, VGG-16 or shift-tolerant AlexNet) is recognised from the weights. Cached per file version.

    Raises:
        ConfigError: no such file. CheckpointError: the file holds something else.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"metrics.lpips_weights: {path} does not exist")
    return _load_cached(*file_key(path))


def st_lpips_weights() -> Path | None:
    """Where the installed ``stlpips-pytorch`` wheel keeps ``alex_shift_tolerant.pth``; None when it is not
    installed. The package is located, not imported."""
    spec = importlib.util.find_spec(ST_LPIPS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / ST_LPIPS_FILE
        if candidate.is_file():
            return candidate
    return None


def _distance(net: PerceptualDistance, a: Tensor, b: Tensor) -> Tensor:
    with torch.no_grad():
        return net(a.detach().float().cpu(), b.detach().float().cpu())


def st_lpips(a: Tensor, b: Tensor) -> Tensor | None:
    """ST-LPIPS (shift-tolerant AlexNet) per image pair: (B,) ≥ 0, lower is more similar; None when the
    ``stlpips-pytorch`` wheel is not installed. ``a``, ``b``: (B, C, H, W) in [0, 1], C ∈ {1, 3}."""
    path = st_lpips_weights()
    if path is None:
        return None
    return _distance(load_network(path), a, b)


def lpips(a: Tensor, b: Tensor, weights: str | Path) -> Tensor:
    """LPIPS per image pair with the network in ``weights`` (see `load_network`): (B,) ≥ 0."""
    return _distance(load_network(weights), a, b)


__all__ = ["MIN_SIDE", "BlurPool", "PerceptualDistance", "load_network", "lpips", "st_lpips", "st_lpips_weights"]
