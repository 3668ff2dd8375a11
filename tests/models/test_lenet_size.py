"""The LeNets size their first Linear layer by arithmetic, and building one on the meta device stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fedinvert.models import build_model
from fedinvert.models.lenet import _flat_size


@pytest.mark.parametrize("name", ["lenet-dlg", "lenet5"])
@pytest.mark.parametrize("size", [8, 11, 16, 28, 31, 32, 64])
def test_the_arithmetic_agrees_with_a_forward_pass(name: str, size: int) -> None:
    model = build_model(name, in_channels=3, num_classes=10, image_size=size, seed=0)
    features = model.body if name == "lenet-dlg" else model.features
    with torch.no_grad():
        real = features(torch.zeros(1, 3, size, size)).numel()
    assert _flat_size(features, 3, size) == real
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)


def test_counting_parameters_on_the_meta_device_imports_no_sympy() -> None:
    code = (
        "import sys; from fedinvert.memory import parameter_count;"
        " n = parameter_count('lenet-dlg', in_channels=3, num_classes=10, image_size=32, seed=0);"
        " print(n, 'sympy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    model = build_model("lenet-dlg", in_channels=3, num_classes=10, image_size=32, seed=0)
    assert out == [str(sum(p.numel() for p in model.parameters())), "False"]
