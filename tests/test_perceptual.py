"""Perceptual distances: our ST-LPIPS / LPIPS networks, strict weight loading, and the runner's keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedinvert import perceptual
from fedinvert.errors import CheckpointError, ConfigError
from fedinvert.perceptual import BlurPool, PerceptualDistance, load_network, lpips, st_lpips, st_lpips_weights

needs_st = pytest.mark.skipif(st_lpips_weights() is None, reason="stlpips-pytorch==0.0.2 is not installed")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The safetensors copies of this module's weight files go to a folder of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDINVERT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def smooth(batch: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, 6, 6, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@needs_st
def test_st_lpips_is_zero_for_identical_images_and_grows_with_noise() -> None:
    images = smooth(4)
    assert torch.equal(st_lpips(images, images.clone()), torch.zeros(4))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(images.shape, generator=g)
    scores = [float(st_lpips(images, (images + s * noise).clamp(0, 1)).mean()) for s in (0.02, 0.1, 0.3)]
    assert 0.0 < scores[0] < scores[1] < scores[2]
    assert scores[2] > 5 * scores[0]
    # a different image is farther than a lightly noisy copy
    assert float(st_lpips(images, smooth(4, seed=9)).mean()) > scores[0]


@needs_st
def test_st_lpips_takes_grey_and_small_images() -> None:
    grey = smooth(2, channels=1, size=16)
    out = st_lpips(grey, grey.flip(0))
    assert out.shape == (2,) and bool(torch.isfinite(out).all()) and bool((out > 0).all())


@needs_st
def test_shipped_st_lpips_weights_load_strictly_with_our_blur_filter() -> None:
    state = torch.load(st_lpips_weights(), map_location="cpu", weights_only=True)
    net = load_network(st_lpips_weights())
    assert net.trunk == "alex-st"
    torch.testing.assert_close(state["net.slice1.1.filt"], BlurPool(64).filt)  # [1, 2, 1]^2 / 16
    torch.testing.assert_close(net.heads[2].weight, state["lin2.model.1.weight"])


def _random_state(trunk: str) -> dict[str, torch.Tensor]:
    """A state dict in the lpips package's layout (net.sliceK.I.*, linK.model.1.weight, scaling_layer.*)."""
    torch.manual_seed(0)
    net = PerceptualDistance(trunk)  # type: ignore[arg-type]
    slices = {"alex": (2, 5, 8, 10), "vgg": (4, 9, 16, 23)}[trunk]
    state: dict[str, torch.Tensor] = {"scaling_layer.shift": net.shift, "scaling_layer.scale": net.scale}
    for key, value in net.features.state_dict().items():
        index = int(key.split(".")[0])
        state[f"net.slice{1 + sum(index >= s for s in slices)}.{key}"] = value
    for k, head in enumerate(net.heads):
        state[f"lin{k}.model.1.weight"] = head.weight.detach().abs()
    return state


@pytest.mark.parametrize("trunk", ["alex", "vgg"])
def test_lpips_with_local_weights_recognises_the_trunk(tmp_path: Path, trunk: str) -> None:
    path = tmp_path / f"{trunk}.pth"
    torch.save(_random_state(trunk), path)
    net = load_network(path)
    assert net.trunk == trunk
    images = smooth(2)
    assert torch.equal(lpips(images, images, path), torch.zeros(2))
    assert bool((lpips(images, images.flip(0), path) > 0).all())


def test_lpips_weight_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lpips_weights"):
        load_network(tmp_path / "missing.pth")
    state = _random_state("alex")
    state.pop("lin3.model.1.weight")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="heads.3.weight"):
        load_network(tmp_path / "partial.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not LPIPS"):
        load_network(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_network(tmp_path / "junk.pth")


def test_evaluate_run_reports_perceptual_scores(tmp_path: Path) -> None:
    from fedinvert.config import resolve_config
    from fedinvert.observation import Reconstruction
    from fedinvert.runner import build_scenario, evaluate_run

    weights = tmp_path / "alex.pth"
    torch.save(_random_state("alex"), weights)
    scenario = build_scenario(resolve_config(["dataset=synthetic", "dataset.indices=[0, 1]", "batch_size=2",
                                              "image_size=32", "channels=3", "model=lenet-dlg"]))
    rec = Reconstruction(images=scenario.private.flip(0).clone(), labels=None, score=0.0)
    settings = {"reference_draws": 2, "reid_distractors": 3, "lpips_weights": str(weights), "st_lpips": True}
    m = evaluate_run(scenario, rec, settings=settings)
    assert m["lpips"] == pytest.approx(0.0, abs=1e-7)  # matched back to the identical images
    assert all(row["lpips"] == pytest.approx(0.0, abs=1e-7) for row in m["per_image"])
    if st_lpips_weights() is None:
        assert m["st_lpips"] is None
    else:
        assert m["st_lpips"] == pytest.approx(0.0, abs=1e-7)
    off = evaluate_run(scenario, rec, settings={**settings, "st_lpips": False, "lpips_weights": None})
    assert off["st_lpips"] is None and off["lpips"] is None and off["per_image"][0]["st_lpips"] is None


@pytest.mark.parametrize("trunk", ["alex", "vgg"])
def test_a_network_loaded_uninitialised_equals_one_initialised_then_loaded(tmp_path: Path, trunk: str) -> None:
    state = _random_state(trunk)
    path = tmp_path / f"{trunk}.pth"
    torch.save(state, path)
    loaded = load_network(path)  # built with initialise=False: every weight comes from the file
    reference = PerceptualDistance(trunk).load_weights(state, source="test")  # type: ignore[arg-type]
    for (name, a), (_, b) in zip(loaded.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    a, b = smooth(2, seed=1), smooth(2, seed=2)
    assert torch.equal(loaded(a, b), reference(a, b))


def test_a_pth_file_is_read_through_its_safetensors_copy_and_a_bad_copy_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "copied.pth"
    torch.save(_random_state("alex"), path)
    first = load_network(path)
    copies = list((perceptual.cache_root() / "perceptual").glob("copied-*.safetensors"))
    assert len(copies) == 1
    with monkeypatch.context() as patch:  # the second load reads only the copy
        patch.setattr(perceptual, "_read_state", lambda _: pytest.fail("the .pth file was read again"))
        perceptual._load_cached.cache_clear()
        assert torch.equal(load_network(path).heads[0].weight, first.heads[0].weight)
    a, b = smooth(2, seed=1), smooth(2, seed=2)
    for damage in (None, b"not safetensors", "foreign"):
        if damage == "foreign":
            from safetensors.torch import save_file

            save_file({"fc.weight": torch.zeros(2, 2)}, str(copies[0]))
        elif damage is not None:
            copies[0].write_bytes(damage)
        perceptual._load_cached.cache_clear()
        again = load_network(path)
        assert again is not first
        for (name, x), (_, y) in zip(again.state_dict().items(), first.state_dict().items(), strict=True):
            assert torch.equal(x, y), name
        assert torch.equal(again(a, b), first(a, b))
    perceptual._load_cached.cache_clear()
    path.write_bytes(b"not a checkpoint")  # the file changed: its old copy is not read
    with pytest.raises(CheckpointError, match="not a readable"):
        load_network(path)
