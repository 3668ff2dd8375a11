"""The no-leak reference, leakage_db and re-identification: closed forms on constructed batches."""

from __future__ import annotations

import math

import pytest
import torch

from fedinvert.metrics import (
    attach_reference,
    evaluate,
    leakage_db,
    no_leak_reference,
    reference_image,
    reid_top1,
    ssim_per_image,
)


def db(mse: float) -> float:
    return -10.0 * math.log10(mse)


def halves(top: float, bottom: float, channels: int = 1, size: int = 4) -> torch.Tensor:
    """A (1, C, size, size) image whose top half is ``top`` and bottom half ``bottom``."""
    image = torch.full((1, channels, size, size), bottom)
    image[..., : size // 2, :] = top
    return image


def checkerboard(low: float, high: float, size: int = 4) -> torch.Tensor:
    rows = torch.arange(size).view(-1, 1)
    cols = torch.arange(size).view(1, -1)
    board = ((rows + cols) % 2).float()
    return (low + (high - low) * board).view(1, 1, size, size)


def test_reference_closed_form_mean_image_best() -> None:
    # public A = (top 0.2, bottom 0.6), B = (0.4, 0.8): per-channel mean 0.5, mean image (0.3, 0.7)
    public = torch.cat([halves(0.2, 0.6), halves(0.4, 0.8)])
    private = halves(0.35, 0.65)
    ref = no_leak_reference(private, public, draws=16)

    assert ref["constant"]["mse"] == pytest.approx(0.15**2, rel=1e-5)
    assert ref["constant"]["psnr"] == pytest.approx(db(0.0225), abs=1e-4)  # 16.48 dB
    assert ref["mean_image"]["mse"] == pytest.approx(0.05**2, rel=1e-5)
    assert ref["mean_image"]["psnr"] == pytest.approx(db(0.0025), abs=1e-4)  # 26.02 dB
    # either public image is 0.05 off on one half and 0.15 on the other: MSE 0.0125 whatever is drawn
    assert ref["random_image"]["mse"] == pytest.approx(0.0125, rel=1e-5)
    assert ref["random_image"]["psnr"] == pytest.approx(db(0.0125), abs=1e-4)  # 19.03 dB
    assert ref["best"] == "mean_image"
    assert ref["psnr"] == ref["mean_image"]["psnr"]
    assert ref["mse"] == ref["mean_image"]["mse"]
    assert ref["ssim"] == pytest.approx(float(ssim_per_image(private, halves(0.3, 0.7))[0]))
    assert ref["public_images"] == 2 and ref["draws"] == 16
    assert ref["mean_image"]["per_image_psnr"] == [pytest.approx(db(0.0025), abs=1e-4)]


def test_reference_closed_form_random_image_best() -> None:
    # a checkerboard and its inverse: their mean (and per-channel mean) is flat grey 0.5
    board = checkerboard(0.0, 1.0)
    public = torch.cat([board, 1.0 - board])
    private = 0.05 + 0.9 * board  # 0.05 / 0.95
    ref = no_leak_reference(private, public, draws=2)  # draws = N: each public image exactly once

    grey = db(0.45**2)  # 6.94 dB
    near, far = db(0.05**2), db(0.95**2)  # 26.02 dB and 0.45 dB
    assert ref["constant"]["psnr"] == pytest.approx(grey, abs=1e-4)
    assert ref["mean_image"]["psnr"] == pytest.approx(grey, abs=1e-4)
    assert ref["random_image"]["psnr"] == pytest.approx((near + far) / 2, abs=1e-4)  # 13.23 dB
    assert ref["random_image"]["mse"] == pytest.approx((0.05**2 + 0.95**2) / 2, rel=1e-5)
    assert ref["best"] == "random_image"
    assert ref["psnr"] == pytest.approx(13.233, abs=1e-3)


def test_reference_constant_is_the_per_channel_mean() -> None:
    # three colour channels, every public image flat per channel; private images flat too
    values = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.7, 0.5], [0.2, 0.3, 0.1]])  # (N=3, C=3)
    public = values.view(3, 3, 1, 1).expand(3, 3, 8, 8).clone()
    mean = values.mean(0)  # (0.2, 0.5, 0.5)
    private = torch.tensor([[0.3, 0.5, 0.6], [0.2, 0.4, 0.5]]).view(2, 3, 1, 1).expand(2, 3, 8, 8).clone()
    ref = no_leak_reference(private, public, draws=5)

    expected = [float(((p - mean) ** 2).mean()) for p in private[:, :, 0, 0]]  # 0.02/3 and 0.01/3
    assert ref["constant"]["per_image_psnr"] == [pytest.approx(db(m), abs=1e-4) for m in expected]
    assert ref["constant"]["mse"] == pytest.approx(sum(expected) / 2, rel=1e-5)
    # flat public images: the mean image is the constant image
    assert ref["mean_image"]["per_image_psnr"] == pytest.approx(ref["constant"]["per_image_psnr"], abs=1e-4)
    torch.testing.assert_close(reference_image("constant", public), mean.view(1, 3, 1, 1).expand(1, 3, 8, 8))
    torch.testing.assert_close(reference_image("mean_image", public), mean.view(1, 3, 1, 1).expand(1, 3, 8, 8))


def test_reference_random_draws_are_seeded_and_with_replacement_when_few() -> None:
    g = torch.Generator().manual_seed(0)
    public = torch.rand(40, 3, 8, 8, generator=g)
    private = torch.rand(3, 3, 8, 8, generator=g)
    a = no_leak_reference(private, public, draws=16, generator=torch.Generator().manual_seed(5))
    b = no_leak_reference(private, public, draws=16, generator=torch.Generator().manual_seed(5))
    c = no_leak_reference(private, public, draws=16, generator=torch.Generator().manual_seed(6))
    assert a == b
    assert a["random_image"]["psnr"] != c["random_image"]["psnr"]
    assert no_leak_reference(private, public) == no_leak_reference(private, public)  # default seed 0
    few = no_leak_reference(private, public[:3], draws=16)  # N < draws: drawn with replacement
    assert few["draws"] == 16 and few["public_images"] == 3


def test_reference_rejects_bad_input() -> None:
    private = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        no_leak_reference(private, torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="draws"):
        no_leak_reference(private, torch.rand(4, 3, 8, 8), draws=0)
    with pytest.raises(ValueError, match="at least one"):
        no_leak_reference(private, torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        no_leak_reference(private, torch.full((4, 3, 8, 8), math.nan))
    with pytest.raises(ValueError, match="reference kind"):
        reference_image("random_image", torch.rand(4, 3, 8, 8))


def test_attach_reference_per_image_leakage_averages_to_the_total() -> None:
    public = torch.cat([halves(0.2, 0.6), halves(0.4, 0.8)])
    private = torch.cat([halves(0.35, 0.65), halves(0.25, 0.75)])
    reconstruction = (private + 0.01).flip(0)  # 40 dB, in the wrong order
    result = attach_reference(evaluate(private, reconstruction), no_leak_reference(private, public))

    assert result["reference"]["best"] == "mean_image"
    assert result["psnr"] == pytest.approx(40.0, abs=1e-3)
    assert result["leakage_db"] == pytest.approx(40.0 - db(0.0025), abs=1e-3)  # 13.98 dB
    rows = result["per_image"]
    assert [row["reference_psnr"] for row in rows] == pytest.approx([db(0.0025)] * 2, abs=1e-4)
    assert sum(row["leakage_db"] for row in rows) / 2 == pytest.approx(result["leakage_db"])
    none = attach_reference(evaluate(private, reconstruction), None)
    assert none["reference"] is None and none["leakage_db"] is None
    assert none["per_image"][0]["reference_psnr"] is None and none["per_image"][0]["leakage_db"] is None


def test_leakage_db_is_psnr_minus_reference() -> None:
    assert leakage_db(21.0, {"psnr": 15.5}) == pytest.approx(5.5)
    assert leakage_db(12.0, {"psnr": 15.5}) == pytest.approx(-3.5)
    assert leakage_db(None, {"psnr": 15.5}) is None
    assert leakage_db(21.0, None) is None


def smooth(batch: int, seed: int, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("metric", ["mse", "ssim"])
def test_reid_exact_copies_and_copies_of_a_distractor(metric: str) -> None:
    private = smooth(4, 0)
    distractors = smooth(99, 1)
    assert reid_top1(private, private.clone(), distractors, metric=metric) == 1.0
    # every reconstruction is some distractor: nobody is re-identified
    assert reid_top1(private, distractors[[3, 10, 50, 98]], distractors, metric=metric) == 0.0
    # two of four recovered: 0.5
    mixed = torch.cat([private[:2], distractors[[7, 8]]])
    assert reid_top1(private, mixed, distractors, metric=metric) == 0.5


def test_reid_mse_nearest_decides_and_ties_are_misses() -> None:
    private = torch.full((2, 1, 4, 4), 0.5)
    private[1] = 0.2
    distractors = torch.stack([torch.full((1, 4, 4), 0.62), torch.full((1, 4, 4), 0.0)])
    rec = private + torch.tensor([0.1, 0.15]).view(2, 1, 1, 1)  # 0.6 (nearer 0.62 than 0.5), 0.35 (own)
    assert reid_top1(private, rec, distractors) == 0.5
    # a distractor identical to the private image: a tie, so not re-identified
    assert reid_top1(private[:1], private[:1], private[:1].clone()) == 0.0
    assert reid_top1(private, rec, distractors[:0]) == 1.0  # no distractors: trivially own


def test_reid_rejects_bad_input() -> None:
    private = smooth(2, 0)
    with pytest.raises(ValueError, match="metric"):
        reid_top1(private, private, smooth(3, 1), metric="lpips")
    with pytest.raises(ValueError, match="distractors"):
        reid_top1(private, private, torch.rand(3, 1, 16, 16))
    with pytest.raises(ValueError, match="same shape"):
        reid_top1(private, private[:1], smooth(3, 1))


# --- the public pool and the distractors (fedinvert.data) --------------------------------------------


def test_public_pool_of_a_one_split_set_leaves_out_the_private_images() -> None:
    from fedinvert.data import load_batch, public_images, public_pool

    pool = public_pool("photos", split=None, exclude_indices=[1, 2], image_size=16, seed=0)
    assert pool.split == "test" and pool.indices == [0, *range(3, 11)] and pool.available == 9
    assert pool.images.shape == (9, 3, 16, 16)
    assert float(pool.images.min()) >= 0.0 and float(pool.images.max()) <= 1.0
    every = load_batch("photos", batch_size=11, indices=list(range(11)), image_size=16).images
    torch.testing.assert_close(pool.images, every[pool.indices])
    assert "without the private images: 9 of 9" in pool.source
    capped = public_pool("synthetic", exclude_indices=[5], count=20, seed=3, image_size=8, channels=1)
    assert len(capped) == 20 and 5 not in capped.indices and capped.indices == sorted(capped.indices)
    assert "seeded sample" in capped.source and capped.available == 999
    again = public_images("synthetic", exclude_indices=[5], count=20, seed=3, image_size=8, channels=1)
    torch.testing.assert_close(again, capped.images)
    other = public_pool("synthetic", exclude_indices=[5], count=20, seed=4, image_size=8, channels=1)
    assert other.indices != capped.indices


def test_public_pool_of_a_two_split_set_is_the_other_split() -> None:
    from fedinvert.data import public_pool
    from fedinvert.errors import DataNotFoundError

    try:
        pool = public_pool("fashion-mnist", split="test", exclude_indices=[0], count=30, image_size=32, channels=3)
    except DataNotFoundError:
        pytest.skip("Fashion-MNIST is not installed here")
    assert pool.split == "train" and len(pool) == 30 and pool.available == 60000
    assert pool.images.shape == (30, 3, 32, 32)
    assert public_pool("fashion-mnist", split="train", count=5).split == "test"


def test_distractors_come_from_the_private_split() -> None:
    from fedinvert.data import distractor_pool

    pool = distractor_pool("synthetic", exclude_indices=[0, 1], count=99, seed=0, image_size=8, channels=3)
    assert len(pool) == 99 and not {0, 1} & set(pool.indices) and pool.extra_split is None
    small = distractor_pool("photos", exclude_indices=[1], count=99, image_size=8)
    assert len(small) == 10 and small.indices == [0, *range(2, 11)]
    assert "10 of 10" in small.source


# --- the runner: metrics.json keys, re-attacked observations -------------------------------------------


def _scenario(tmp_path=None):  # type: ignore[no-untyped-def]
    from fedinvert.config import resolve_config
    from fedinvert.runner import build_scenario

    cfg = resolve_config(["dataset=synthetic", "dataset.indices=[3, 7]", "batch_size=2", "image_size=16",
                          "channels=3", "model=lenet-dlg", "seed=1"])
    return build_scenario(cfg), cfg


def test_evaluate_run_reports_reference_leakage_and_reid() -> None:
    from fedinvert.observation import Reconstruction, StageResult
    from fedinvert.runner import evaluate_run

    scenario, _ = _scenario()
    private = scenario.private
    close = (private + 0.02 * torch.randn(private.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    flat = torch.full_like(private, 0.5)
    rec = Reconstruction(images=close.flip(0), labels=None, score=0.0,
                         stages=[StageResult("early", flat, 1.0), StageResult("late", close, 0.5)])
    m = evaluate_run(scenario, rec, settings={"reference_draws": 4, "reid_distractors": 30})

    ref = m["reference"]
    assert ref["public_images"] == 998 and ref["draws"] == 4 and "without the private images" in ref["source"]
    assert ref["psnr"] == max(ref[k]["psnr"] for k in ("constant", "mean_image", "random_image"))
    assert m["leakage_db"] == pytest.approx(m["psnr"] - ref["psnr"])
    assert m["leakage_db"] > 10.0  # 2 % noise is ~34 dB; no public guess comes near
    for row in m["per_image"]:
        assert row["leakage_db"] == pytest.approx(row["psnr"] - row["reference_psnr"])
    early, late = m["stages"]
    assert early["leakage_db"] == pytest.approx(early["psnr"] - ref["psnr"])
    assert early["leakage_db"] < late["leakage_db"]
    assert m["reid_top1"] == 1.0 and m["reid_distractors"] == 30
    assert m["lpips"] is None


def test_reference_survives_saving_the_observation_and_is_null_without_it(tmp_path, caplog) -> None:
    from fedinvert.config import resolve_config
    from fedinvert.observation import Reconstruction
    from fedinvert.runner import evaluate_run, load_observation, save_observation

    scenario, cfg = _scenario()
    path = tmp_path / "observation.safetensors"
    save_observation(path, scenario, cfg)
    loaded = load_observation(path, resolve_config([]))
    assert loaded.info["data"] == scenario.info["data"]
    assert loaded.info["data"]["indices"] == [3, 7] and loaded.info["data"]["image_size"] == 16

    loaded.private = scenario.private  # as when tensors.safetensors lies beside it
    rec = Reconstruction(images=scenario.private.clone(), labels=None, score=0.0)
    again = evaluate_run(loaded, rec, settings={"reference_draws": 4, "reid_distractors": 5})
    first = evaluate_run(scenario, rec, settings={"reference_draws": 4, "reid_distractors": 5})
    assert again["reference"] == first["reference"] and again["reid_top1"] == 1.0

    loaded.info.pop("data")  # an observation saved before the data set was recorded
    with caplog.at_level("WARNING", logger="fedinvert.runner"):
        old = evaluate_run(loaded, rec)
    assert old["reference"] is None and old["leakage_db"] is None and old["reid_top1"] is None
    assert old["per_image"][0]["leakage_db"] is None
    assert "no no-leak reference" in caplog.text


def test_reconstruction_figure_shows_the_reference_row_and_caption(tmp_path) -> None:
    from PIL import Image

    from fedinvert.observation import Reconstruction
    from fedinvert.report import leakage_caption
    from fedinvert.runner import RunResult, evaluate_run, reference_row, write_run_folder

    scenario, cfg = _scenario()
    rec = Reconstruction(images=scenario.private.flip(0).clone(), labels=None, score=0.0)
    metrics = evaluate_run(scenario, rec, settings={"reference_draws": 4, "reid_distractors": 5})
    guess, kind = reference_row(scenario, metrics)
    assert kind in ("constant", "mean_image") and guess.shape == (1, 3, 16, 16)
    assert metrics["reference"][kind]["psnr"] <= metrics["reference"]["psnr"]
    lines = leakage_caption(metrics)
    assert lines[0] == f"PSNR {metrics['psnr']:.2f} dB"
    assert lines[1].startswith(f"no-leak reference {metrics['reference']['psnr']:.2f} dB")
    assert lines[2] == f"leakage {metrics['leakage_db']:+.2f} dB"

    out = tmp_path / "run"
    write_run_folder(out, RunResult(config=cfg, metrics=metrics, reconstruction=rec, scenario=scenario))
    with Image.open(out / "reconstruction.png") as png:
        height = png.height
    tile = 16 * 4 + 2  # 16 px images are shown 4x, 2 px apart
    assert height == 2 + 3 * tile + 14 * len(lines)  # private, reconstructed, no-leak guess; the caption
