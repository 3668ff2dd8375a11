"""The small VGG-style ConvNet used as the default victim of generation-based attacks."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from fedinvert.models.base import MODELS
from fedinvert.models.layers import NORMS, Norm, check_choice, check_dims, norm_layer, scaled_widths

BASE_WIDTHS = (32, 64, 64, 128)


@MODELS.register("convnet")
class ConvNet(nn.Module):
    """Four blocks of 3×3 convolution + normalisation + ReLU, then global average pooling and a Linear head.

    Widths 32-64-64-128 scaled by ``width`` (``width=2`` gives 64-128-128-256); 2×2 max-pooling after blocks
    2, 3 and 4. Global average pooling makes the network accept any resolution ≥ 8 px. Convolutions carry a
    bias only when ``norm="none"`` (a bias before a normalisation layer has no effect).

    Parameter names: ``layer{k}.conv.weight``, ``layer{k}.norm.weight``, ``fc.weight``, ``fc.bias``.

    Args:
        in_channels: image channels C (≥ 1).
        num_classes: number of classes (≥ 2).
        image_size: side of the square input images in pixels (≥ 8); only checked, the net is size-agnostic.
        width: multiplier of the channel widths (> 0).
        norm: ``"batch"`` (BatchNorm2d, default), ``"group"`` (GroupNorm with min(8, C) groups, or the largest
            divisor of C below that) or ``"none"``.

    Input (B, C, H, W) in the victim's normalised space; output logits (B, num_classes).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        width: float = 1.0,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        check_dims("convnet", in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        check_choice("convnet", "norm", norm, NORMS)
        widths = scaled_widths("convnet", BASE_WIDTHS, width)
        blocks = []
        previous = in_channels
        for k, channels in enumerate(widths, start=1):
            parts: OrderedDict[str, nn.Module] = OrderedDict(
                conv=nn.Conv2d(previous, channels, kernel_size=3, padding=1, bias=norm == "none"),
                norm=norm_layer(norm, channels),
                relu=nn.ReLU(inplace=False),
            )
            if k >= 2:
                parts["pool"] = nn.MaxPool2d(2)
            blocks.append(nn.Sequential(parts))
            previous = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
