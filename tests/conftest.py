"""Shared test settings: a fixed thread count keeps small-model timings stable on shared machines."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("FEDINVERT_TEST_THREADS", "2")))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped on machines without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Small networks on a shared 2-core machine run far faster on one thread (no OpenMP spin contention);
    modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fast_cfg():
    """Overrides that keep a run small: eager step, no progress bar."""
    return ["progress=false", "attack.compile=false", "device=cpu"]
