"""LeNet victims: DLG's sigmoid LeNet and the classic LeNet-5."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from fedinvert.models.base import MODELS
from fedinvert.models.layers import check_choice, check_dims

Activation = Literal["sigmoid", "relu"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)


def _activation(kind: str) -> nn.Module:
    return nn.Sigmoid() if kind == "sigmoid" else nn.ReLU(inplace=False)


def _flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Length of the flattened output of ``features`` for one input image.

    Computed from the size arithmetic of its convolutions and pools (element-wise layers keep the size), not by
    a dummy forward: on the meta device (`fedinvert.memory.parameter_count`) a forward's shape inference imports
    sympy, about a second of every run's start-up.
    """
    channels, height, width = in_channels, image_size, image_size
    for layer in features.modules():
        if isinstance(layer, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d)):
            if getattr(layer, "ceil_mode", False):
                raise ValueError("_flat_size does not handle ceil_mode pools")
            kernel, stride, padding = (_pair(getattr(layer, a)) for a in ("kernel_size", "stride", "padding"))
            dilation = _pair(getattr(layer, "dilation", 1))
            height, width = (
                (size + 2 * p - d * (k - 1) - 1) // s + 1
                for size, k, s, p, d in zip((height, width), kernel, stride, padding, dilation, strict=True)
            )
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
    return channels * height * width


def _pair(value: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(value, str):
        raise ValueError(f"_flat_size needs numeric padding, got {value!r}")
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@MODELS.register("lenet-dlg")
class LeNetDLG(nn.Module):
    """The LeNet of DLG (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019).

    Three 5×5 convolutions with 12 channels each (strides 2, 2, 1; padding 2), a Sigmoid after each, then
    flatten and one Linear layer to the classes (768 features at 32 px, 588 at 28 px). Every weight and bias
    is drawn from U(−0.5, 0.5), DLG's convention, which iDLG's label inference and DLG's L-BFGS rely on.

    Args:
        in_channels: image channels C (≥ 1).
        num_classes: number of classes (≥ 2).
        image_size: side H = W of the square input images in pixels (≥ 8); the Linear layer is sized for it.
        activation: ``"sigmoid"`` (DLG's, default) or ``"relu"``: the same network with ReLUs, for the survey's
            activation comparison.

    Input (B, C, image_size, image_size) in the victim's normalised space; output logits (B, num_classes).
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, image_size: int, activation: Activation = "sigmoid"
    ) -> None:
        super().__init__()
        check_dims("lenet-dlg", in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        check_choice("lenet-dlg", "activation", activation, ACTIVATIONS)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, stride=2, padding=2),
            _activation(activation),
            nn.Conv2d(12, 12, kernel_size=5, stride=2, padding=2),
            _activation(activation),
            nn.Conv2d(12, 12, kernel_size=5, stride=1, padding=2),
            _activation(activation),
        )
        self.fc = nn.Linear(_flat_size(self.body, in_channels, image_size), num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every weight and bias from U(−0.5, 0.5) (uses the global torch RNG, as layer inits do)."""
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.5, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.body(x), 1))


@MODELS.register("lenet5")
class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) for any channels, classes and resolution.

    conv 6@5×5 (padding 2) → act → 2×2 average pool → conv 16@5×5 → act → 2×2 average pool → fc 120 → act
    → fc 84 → act → fc num_classes. At 28 px this is the classic MNIST form (16·5·5 = 400 features). The second
    convolution has no padding, as in the original, when the image is at least 12 px; smaller images (8–11 px)
    pad it by 2 so that a feature map survives. The first fully-connected layer is sized by a dummy forward.

    Args:
        in_channels: image channels C (≥ 1).
        num_classes: number of classes (≥ 2).
        image_size: side H = W of the square input images in pixels (≥ 8).
        activation: ``"sigmoid"`` (the original, default) or ``"relu"``.

    Input (B, C, image_size, image_size) in the victim's normalised space; output logits (B, num_classes).
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, image_size: int, activation: Activation = "sigmoid"
    ) -> None:
        super().__init__()
        check_dims("lenet5", in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        check_choice("lenet5", "activation", activation, ACTIVATIONS)
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
                act1=_activation(activation),
                pool1=nn.AvgPool2d(2),
                conv2=nn.Conv2d(6, 16, kernel_size=5, padding=0 if image_size >= 12 else 2),
                act2=_activation(activation),
                pool2=nn.AvgPool2d(2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(_flat_size(self.features, in_channels, image_size), 120),
                act3=_activation(activation),
                fc2=nn.Linear(120, 84),
                act4=_activation(activation),
                fc3=nn.Linear(84, num_classes),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
