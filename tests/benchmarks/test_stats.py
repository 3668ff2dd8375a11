"""benchmarks/_stats.py: t-intervals, paired differences, the leak verdict and the private-batch layout."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _stats  # noqa: E402

from fedinvert.errors import ConfigError  # noqa: E402

# two-sided 95 % Student-t quantiles t(0.975, df) from a printed table
T975 = {3: 3.182446, 4: 2.776445, 7: 2.364624}


def test_t_interval_matches_hand_computation():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    # mean 3, sample std sqrt(2.5), standard error sqrt(2.5 / 5)
    got = _stats.t_interval(values)
    assert got.mean == pytest.approx(3.0)
    assert got.half == pytest.approx(T975[4] * math.sqrt(0.5), rel=1e-6)
    assert got.n == 5
    assert (got.low, got.high) == pytest.approx((3.0 - got.half, 3.0 + got.half))


def test_t_interval_edge_cases():
    assert _stats.t_interval([7.0]).half == math.inf
    assert _stats.t_interval([2.0, 2.0, 2.0]).half == 0.0
    with pytest.raises(ValueError):
        _stats.t_interval([])
    with pytest.raises(ValueError):
        _stats.t_interval([1.0, float("nan")])


def rows(psnr, *, leakage=None, indices=None):
    leakage = leakage if leakage is not None else [p - 10.0 for p in psnr]
    return [
        {"batch": k, "seed": k, "indices": indices[k] if indices else f"{2 * k} {2 * k + 1}", "psnr": p,
         "ssim": 0.5, "reference_psnr": p - d, "leakage_db": d, "reid_top1": 0.25, "label_accuracy": 1.0,
         "seconds": 2.0}
        for k, (p, d) in enumerate(zip(psnr, leakage, strict=True))
    ]


def test_paired_difference_matches_hand_computation():
    a = rows([10.0, 12.0, 11.0, 13.0])
    b = rows([9.0, 11.5, 10.0, 12.0])
    # differences 1, 0.5, 1, 1: mean 0.875, sample std 0.25, standard error 0.125
    got = _stats.paired(a, b)
    assert got["diff_mean"] == pytest.approx(0.875)
    assert got["diff_ci95"] == pytest.approx(T975[3] * 0.125, rel=1e-6)
    assert got["excludes_zero"] is True
    assert got["n_batches"] == 4
    # the unpaired intervals overlap widely; the paired one still separates the cells
    assert _stats.t_interval([r["psnr"] for r in a]).low < _stats.t_interval([r["psnr"] for r in b]).high


def test_paired_difference_including_zero_and_mismatched_batches():
    got = _stats.paired(rows([11.0, 9.0, 10.5, 9.5]), rows([10.0, 10.0, 10.0, 10.0]))
    assert got["diff_mean"] == pytest.approx(0.0)
    assert got["excludes_zero"] is False
    with pytest.raises(ValueError):
        _stats.paired(rows([1.0, 2.0]), rows([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        _stats.paired(rows([1.0, 2.0]), rows([1.0, 2.0], indices=["0 1", "5 6"]))
    # a batch that extends the other's (secure aggregation: K·B images) still pairs
    assert _stats.paired(rows([1.0, 2.0], indices=["0 1 8 9", "2 3 7 6"]), rows([0.0, 0.0]))["n_batches"] == 2


def test_summary_and_verdict():
    leaking = _stats.summarize(rows([14.0, 15.0, 16.0, 15.0, 14.5, 15.5, 16.5, 13.5]))
    assert leaking["n_batches"] == 8
    assert leaking["psnr_mean"] == pytest.approx(15.0)
    assert leaking["reference_psnr"] == pytest.approx(10.0)
    assert leaking["leakage_db"] == pytest.approx(5.0)
    # per-batch leakage = psnr − 10: the same spread as the PSNRs
    assert leaking["leakage_ci95"] == pytest.approx(leaking["psnr_ci95"])
    assert leaking["verdict"].startswith("leaks +5.00")
    straddling = _stats.summarize(rows([10.0] * 4, leakage=[0.5, -0.4, 0.3, -0.2]))
    assert straddling["leakage_db"] > 0 and straddling["verdict"] == _stats.NO_LEAK
    below = _stats.summarize(rows([10.0] * 4, leakage=[-1.0, -1.2, -0.8, -1.1]))
    assert below["verdict"] == _stats.NO_LEAK
    assert _stats.summarize(rows([12.0]))["verdict"] == _stats.NO_LEAK  # one batch: no interval


def test_batch_indices_are_disjoint_seeded_and_nested():
    layout = _stats.batch_indices("lfw", n_batches=8, per_batch=4, seed=3)
    assert len(layout) == 8 and all(len(b) == 4 for b in layout)
    flat = [i for b in layout for i in b]
    assert len(set(flat)) == 32 and all(0 <= i < 100 for i in flat)
    assert layout == _stats.batch_indices("lfw", n_batches=8, per_batch=4, seed=3)
    assert layout != _stats.batch_indices("lfw", n_batches=8, per_batch=4, seed=4)
    # with a stride of 8 the 4-image batches are the first halves of the 8-image ones
    small = _stats.batch_indices("lfw", n_batches=8, per_batch=4, seed=3, stride=8)
    large = _stats.batch_indices("lfw", n_batches=8, per_batch=8, seed=3)
    assert all(s == g[:4] for s, g in zip(small, large, strict=True))


def test_batch_indices_unique_labels_and_too_small_split():
    layout = _stats.batch_indices("lfw", n_batches=8, per_batch=4, seed=0, unique_labels=True)
    flat = [i for b in layout for i in b]
    assert len(set(flat)) == 32
    assert all(len({i % 10 for i in b}) == 4 for b in layout)  # LFW face i has label i mod 10
    with pytest.raises(ConfigError, match="11 images"):
        _stats.batch_indices("photos", n_batches=3, per_batch=4)
    with pytest.raises(ConfigError, match="distinct labels"):
        _stats.batch_indices("photos", n_batches=1, per_batch=11, unique_labels=True)  # labels 0..9, 0


def test_batch_row_fails_loudly_without_the_reference():
    metrics = {"psnr": 12.0, "ssim": 0.3, "label_accuracy": 1.0, "seconds": 1.0}
    with pytest.raises(_stats.ContractError, match="reference"):
        _stats.batch_row(SimpleNamespace(metrics=metrics))
    full = {**metrics, "reference": {"psnr": 11.0}, "leakage_db": 1.0, "reid_top1": 0.5}
    assert _stats.batch_row(SimpleNamespace(metrics=full))["reference_psnr"] == 11.0


def test_extend_batches_adds_other_clients_after_the_own_images():
    layout = _stats.batch_indices("lfw", n_batches=8, per_batch=4, seed=1)
    own = {i for b in layout for i in b}
    extended = _stats.extend_batches("lfw", layout, 4, seed=1)
    assert all(e[:4] == b for e, b in zip(extended, layout, strict=True))
    extras = [i for e in extended for i in e[4:]]
    # 32 extra faces fit in the 68 that are in no batch: all distinct and none another batch's own
    assert len(set(extras)) == 32 and not set(extras) & own
    # more than the pool: each batch still holds distinct faces, its own first
    big = _stats.extend_batches("lfw", layout, 70, seed=1)
    assert all(len(set(e)) == 74 and e[:4] == b for e, b in zip(big, layout, strict=True))
    with pytest.raises(ConfigError, match="100 images"):
        _stats.extend_batches("lfw", layout, 97)
