"""Shared test settings: a fixed thread count keeps small-model timings stable on shared machines."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower reads it at import; tests never phone home

import pytest
import torch

from fedinvert.metrics import match, no_leak_reference, psnr_per_image

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


def check_leakage(private: torch.Tensor, images: torch.Tensor, public: torch.Tensor, *, margin_db: float) -> dict:
    """Assert that ``images`` leak ``private``: their mean PSNR after matching is at least ``margin_db`` above the
    no-leak reference of this very batch (`fedinvert.metrics.no_leak_reference` from ``public``, images of the
    same data set that are not in the batch).

    Args:
        private: (B, C, H, W) private images in [0, 1].
        images: (B, C, H, W) reconstructions in [0, 1], in any order (matched here as the evaluation does).
        public: (N, C, H, W) public images in [0, 1].
        margin_db: the leakage the test asks for, in dB.

    Returns:
        ``{"psnr", "reference", "leakage_db"}`` for further assertions.
    """
    reference = no_leak_reference(private, public)
    psnr = float(psnr_per_image(private, images[match(private, images)]).mean())
    leakage = psnr - reference["psnr"]
    assert leakage >= margin_db, (
        f"PSNR {psnr:.2f} dB is {leakage:+.2f} dB over the no-leak reference {reference['psnr']:.2f} dB"
        f" ({reference['best']}); the test asks for at least +{margin_db} dB"
    )
    return {"psnr": psnr, "reference": reference, "leakage_db": leakage}


@pytest.fixture(scope="session")
def assert_leaks():
    """`check_leakage`: a quality test's one assertion of leakage over the no-leak reference of its own batch."""
    return check_leakage


def read_one_error_line(capsys) -> str:
    """The CLI's stderr as its promised single ``error: ...`` line, with no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


@pytest.fixture(scope="session")
def one_error_line():
    """`read_one_error_line`: a bad-input test's check of what the CLI printed."""
    return read_one_error_line
