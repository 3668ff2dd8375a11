"""ResNet-18/34 victims with a CIFAR or ImageNet stem, written here (no torchvision dependency).

Parameter names follow torchvision (``conv1.weight``, ``bn1.weight``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ``fc.weight``) so that users recognise them; the layers keep PyTorch's
default initialisation.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError
from fedinvert.models.base import MODELS
from fedinvert.models.layers import check_choice, check_dims, norm_layer, scaled_widths

BASE_WIDTHS = (64, 128, 256, 512)
Stem = Literal["cifar", "imagenet"]
ResNetNorm = Literal["batch", "group"]
STEMS: tuple[str, ...] = get_args(Stem)
RESNET_NORMS: tuple[str, ...] = get_args(ResNetNorm)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (He et al., 2016); a 1×1 projection when shapes change."""

    def __init__(self, in_channels: int, channels: int, *, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, channels)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(norm, channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                norm_layer(norm, channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of BasicBlocks (ResNet-18: ``blocks=(2, 2, 2, 2)``, ResNet-34: ``(3, 4, 6, 3)``).

    The ``"cifar"`` stem is one 3×3 convolution with stride 1 and no max-pool (for 28–64 px images); the
    ``"imagenet"`` stem is a 7×7 stride-2 convolution followed by a 3×3 stride-2 max-pool. Four stages of widths
    64-128-256-512 (scaled by ``width``), adaptive average pooling and a Linear head ``fc``. Registered as
    ``resnet18`` and ``resnet34`` (CIFAR stem) and ``resnet18-imagenet``.

    Args:
        in_channels: image channels C (≥ 1).
        num_classes: number of classes (≥ 2).
        image_size: side of the square input images in pixels (≥ 8); only checked, the net is size-agnostic.
        blocks: BasicBlocks per stage (four positive ints).
        stem: ``"cifar"`` or ``"imagenet"``.
        width: multiplier of the stage widths (> 0).
        norm: ``"batch"`` (BatchNorm2d, default) or ``"group"`` (GroupNorm with min(8, C) groups, or the
            largest divisor of C below that; what DP-SGD needs). The layers keep torchvision's ``bn`` names.

    Input (B, C, H, W) in the victim's normalised space; output logits (B, num_classes).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        stem: Stem = "cifar",
        width: float = 1.0,
        norm: ResNetNorm = "batch",
    ) -> None:
        super().__init__()
        check_dims("resnet", in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        check_choice("resnet", "stem", stem, STEMS)
        check_choice("resnet", "norm", norm, RESNET_NORMS)
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ConfigError(f"model 'resnet': blocks must be four positive counts, got {blocks}")
        widths = scaled_widths("resnet", BASE_WIDTHS, width)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = norm_layer(norm, widths[0])
        self.relu = nn.ReLU(inplace=False)
        previous = widths[0]
        stages = []
        for index, (channels, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if index == 0 else 2
            layer = []
            for b in range(count):
                layer.append(BasicBlock(previous, channels, stride=stride if b == 0 else 1, norm=norm))
                previous = channels
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


MODELS.add("resnet18", ResNet, blocks=(2, 2, 2, 2), stem="cifar")
MODELS.add("resnet18-imagenet", ResNet, blocks=(2, 2, 2, 2), stem="imagenet")
MODELS.add("resnet34", ResNet, blocks=(3, 4, 6, 3), stem="cifar")
