"""Metrics: closed forms, agreement with scikit-image, batch matching, label multisets, evaluate()."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch
from skimage.metrics import structural_similarity
from torch import nn

from fedinvert.metrics import (
    METRICS,
    PSNR_CAP_DB,
    evaluate,
    feature_distance,
    label_accuracy,
    match,
    mse_per_image,
    psnr_per_image,
    ssim_per_image,
    ssim_window,
)
from fedinvert.models import build_model, penultimate_features


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions run far faster on one thread than on two cores shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Structured [0, 1] images (blurred noise), so SSIM and matching have something to see."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, max(2, size // 4), max(2, size // 4), generator=g)
    fine = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.8 * fine + 0.2 * torch.rand(batch, channels, size, size, generator=g)).clamp(0, 1)


def test_psnr_closed_form_and_cap() -> None:
    a = torch.full((2, 3, 8, 8), 0.5)
    b = a + 0.1  # uniform error 0.1 -> MSE 0.01 -> 20 dB
    torch.testing.assert_close(mse_per_image(a, b), torch.full((2,), 0.01))
    torch.testing.assert_close(psnr_per_image(a, b), torch.full((2,), 20.0))
    b[1] = a[1] + 0.01  # 40 dB
    torch.testing.assert_close(psnr_per_image(a, b), torch.tensor([20.0, 40.0]))
    exact = psnr_per_image(a, a.clone())
    assert torch.equal(exact, torch.full((2,), PSNR_CAP_DB))
    nearly = psnr_per_image(a, a + 1e-7)
    assert (nearly <= PSNR_CAP_DB).all()


def test_ssim_identical_is_one_and_different_less() -> None:
    a = smooth_images(3, 3, 32)
    torch.testing.assert_close(ssim_per_image(a, a.clone()), torch.ones(3))
    noisy = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    values = ssim_per_image(a, noisy)
    assert values.shape == (3,)
    assert (values < 0.99).all() and (values > 0).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_agrees_with_scikit_image(channels: int) -> None:
    a = smooth_images(1, channels, 32, seed=2)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    b = (a + 0.1 * noise).clamp(0, 1)
    ours = ssim_per_image(a, b).item()
    theirs = structural_similarity(
        a[0].double().numpy(),
        b[0].double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
    )
    assert 0.3 < theirs < 0.95
    assert ours == pytest.approx(theirs, abs=1e-4)


@pytest.mark.parametrize(
    ("height", "width", "window"), [(64, 64, 11), (10, 12, 9), (8, 8, 7), (3, 5, 3), (2, 2, 1)]
)
def test_ssim_window_shrinks_for_small_images(height: int, width: int, window: int) -> None:
    assert ssim_window(height, width) == window
    a = torch.rand(2, 1, height, width, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim_per_image(a, a.clone()), torch.ones(2))
    assert (ssim_per_image(a, 1 - a) < 1).all()


@pytest.mark.parametrize("name", METRICS.names())
def test_every_registered_metric_scores_per_image(name: str) -> None:
    a = smooth_images(4, 3, 16)
    b = smooth_images(4, 3, 16, seed=5)
    metric = METRICS.get(name)
    values = metric(a, b)
    assert values.shape == (4,) and torch.isfinite(values).all()
    perfect = metric(a, a.clone())
    assert not torch.equal(values, perfect)


def test_match_recovers_a_known_permutation() -> None:
    private = smooth_images(6, 3, 16)
    shuffle = torch.tensor([3, 0, 5, 1, 4, 2])
    reconstructed = private[shuffle] + 0.01 * torch.randn(
        private.shape, generator=torch.Generator().manual_seed(4)
    )
    perm = match(private, reconstructed)
    assert perm.dtype == torch.long
    assert torch.equal(shuffle[perm], torch.arange(6))
    torch.testing.assert_close(reconstructed[perm], private, atol=0.05, rtol=0)


def test_match_picks_the_best_subset_of_a_larger_reconstruction() -> None:
    private = smooth_images(3, 1, 8)
    decoys = smooth_images(4, 1, 8, seed=9)
    reconstructed = torch.cat([decoys[:2], private[2:3], decoys[2:], private[0:1], private[1:2]])
    assert match(private, reconstructed).tolist() == [5, 6, 2]
    with pytest.raises(ValueError, match="cannot match 7 private images with only 3"):
        match(reconstructed, private)


def test_label_accuracy_is_a_multiset_overlap() -> None:
    assert label_accuracy(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 2])) == pytest.approx(2 / 3)
    assert label_accuracy(torch.tensor([3, 1, 2]), torch.tensor([2, 3, 1])) == 1.0
    assert label_accuracy([0, 0], [0, 0, 0]) == 1.0
    assert label_accuracy([4, 5], [6, 7]) == 0.0
    assert label_accuracy(torch.tensor([1, 2]), None) is None


def test_feature_distance_restores_modes_and_needs_no_grad() -> None:
    model = build_model("convnet", in_channels=3, num_classes=4, image_size=16, width=0.25)
    model.train()
    model.layer2.eval()  # a mixed state must survive
    x = torch.rand(2, 3, 16, 16)
    y = x.clone()
    y[1] = torch.rand(3, 16, 16)
    distances = feature_distance(model, x, y)
    assert model.training and model.layer1.training and not model.layer2.training
    assert not distances.requires_grad
    assert distances[0].item() == pytest.approx(0.0, abs=1e-12)
    assert distances[1].item() > 0
    with torch.no_grad():
        model.eval()
        expected = (penultimate_features(model, x) - penultimate_features(model, y)).square().mean(1)
    torch.testing.assert_close(distances, expected)


@pytest.mark.parametrize("size", [8, 28])
def test_evaluate_scores_matched_images_as_json(size: int) -> None:
    private = smooth_images(4, 1, size)
    shuffle = torch.tensor([2, 3, 0, 1])
    reconstructed = private[shuffle].clone()
    reconstructed[shuffle.argsort()[1]] += 0.05  # private image 1 recovered with error
    reconstructed = reconstructed.clamp(0, 1)
    model = build_model("lenet-dlg", in_channels=1, num_classes=10, image_size=size)
    result = evaluate(
        private,
        reconstructed,
        true_labels=torch.tensor([1, 1, 2, 3]),
        rec_labels=torch.tensor([2, 1, 3, 3]),
        model=model,
        normalization=((0.5,), (0.5,)),
    )
    assert {"psnr", "ssim", "mse", "label_accuracy", "feature_distance", "order", "per_image"} <= set(result)
    assert result["order"] == shuffle.argsort().tolist()
    assert result["label_accuracy"] == 0.75
    rows = result["per_image"]
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    assert [row["matched"] for row in rows] == result["order"]
    assert [row["psnr"] for row in rows if row["index"] != 1] == [PSNR_CAP_DB] * 3
    assert 20 < rows[1]["psnr"] < PSNR_CAP_DB and rows[1]["ssim"] < 1 and rows[1]["feature_distance"] > 0
    assert result["psnr"] == pytest.approx(sum(row["psnr"] for row in rows) / 4)
    assert result["mse"] == pytest.approx(sum(row["mse"] for row in rows) / 4)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert all(isinstance(result[key], float) for key in ("psnr", "ssim", "mse", "feature_distance"))


def test_evaluate_without_labels_or_model() -> None:
    private = smooth_images(2, 3, 8)
    result = evaluate(private, private.flip(0))
    assert result["label_accuracy"] is None and result["feature_distance"] is None
    assert result["order"] == [1, 0] and result["psnr"] == PSNR_CAP_DB
    assert "feature_distance" not in result["per_image"][0]
    assert evaluate(private, private, true_labels=torch.tensor([0, 1]))["label_accuracy"] is None
    json.dumps(result, allow_nan=False)


def test_evaluate_rejects_nan_and_shape_mismatch() -> None:
    private = smooth_images(2, 1, 8)
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate(private, torch.full_like(private, math.nan))
    with pytest.raises(ValueError, match="same image shape"):
        evaluate(private, smooth_images(2, 3, 8))


def test_gradient_cosine_against_explicit_per_sample_gradients() -> None:
    from fedinvert.metrics import gradient_cosine

    model = build_model("lenet-dlg", in_channels=1, num_classes=10, image_size=16, seed=0)
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 4, 1])
    norm = ((0.5,), (0.5,))
    rows = []
    for i in range(3):
        loss = nn.functional.cross_entropy(model((images[i : i + 1] - 0.5) / 0.5), labels[i : i + 1])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(float(nn.functional.cosine_similarity(rows[a], rows[b], dim=0)) for a, b in pairs) / 3
    model.train()
    assert gradient_cosine(model, images, labels, norm) == pytest.approx(expected, abs=1e-5)
    assert model.training  # restored
    twice = torch.cat([images[:1], images[:1]])
    assert gradient_cosine(model, twice, labels[:1].repeat(2), norm) == pytest.approx(1.0, abs=1e-5)
    assert gradient_cosine(model, images[:1], labels[:1], norm) is None
