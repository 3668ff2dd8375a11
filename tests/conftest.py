"""Shared test settings: a fixed thread count keeps small-model timings stable on shared machines."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("FEDINVERT_TEST_THREADS", "2")))


@pytest.fixture
def fast_cfg():
    """Overrides that keep a run small: eager step, no progress bar."""
    return ["progress=false", "attack.compile=false", "device=cpu"]
