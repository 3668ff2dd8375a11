"""A fully connected victim: the model whose first layer is linear, as analysis-based attacks assume."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from fedinvert.errors import ConfigError
from fedinvert.models.base import MODELS
from fedinvert.models.layers import check_dims


@MODELS.register("mlp")
class MLP(nn.Module):
    """Flatten → ``layers`` × (Linear → ReLU) → Linear to the classes (PyTorch's default initialisation).

    The first layer sees the flattened input image itself, so a linear-layer leakage attack reads a single
    image out of its weight and bias gradients exactly (Phong et al., 2017).

    Args:
        in_channels: image channels C (≥ 1).
        num_classes: number of classes (≥ 2).
        image_size: side H = W of the square input images in pixels (≥ 8).
        hidden: width of each hidden layer (≥ 1).
        layers: number of hidden layers (≥ 1).

    Input (B, C, image_size, image_size) in the victim's normalised space; output logits (B, num_classes).
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, image_size: int, hidden: int = 128, layers: int = 1
    ) -> None:
        super().__init__()
        check_dims("mlp", in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        if int(hidden) < 1 or int(layers) < 1:
            raise ConfigError(f"model 'mlp': hidden and layers must be at least 1, got {hidden} and {layers}")
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_channels * image_size * image_size
        for i in range(int(layers)):
            blocks[f"fc{i + 1}"] = nn.Linear(width, int(hidden))
            blocks[f"act{i + 1}"] = nn.ReLU()
            width = int(hidden)
        blocks["head"] = nn.Linear(width, num_classes)
        self.layers = nn.Sequential(blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(torch.flatten(x, 1))
