"""The Flower example, loaded once for the tests that run its federations."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower_fashion.py"


@pytest.fixture(scope="session")
def example():
    pytest.importorskip("flwr")
    try:
        from fedinvert.data import FashionMNIST

        FashionMNIST().size(split="train")
    except Exception as err:  # noqa: BLE001 - the data set is an optional system package
        pytest.skip(f"Fashion-MNIST is not available: {err}")
    spec = importlib.util.spec_from_file_location("flower_fashion", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["flower_fashion"] = module
    spec.loader.exec_module(module)
    return module
