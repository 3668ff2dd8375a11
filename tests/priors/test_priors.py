"""Staged generative priors: loading, stage consistency, stage variables, layouts, errors, the victim adapter."""

from __future__ import annotations

import argparse
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fedinvert.errors import CheckpointError, ConfigError, DataNotFoundError
from fedinvert.priors import PRIORS, BigGANDeep, FaceDCGAN, Prior, StyleGAN2, build_prior, to_victim
from fedinvert.priors import dcgan as dcgan_module
from fedinvert.priors.stylegan2 import ModulatedConv2d, upfirdn2d

HAS_FACE_WHEEL = importlib.util.find_spec("gan_face_generate") is not None
needs_wheel = pytest.mark.skipif(not HAS_FACE_WHEEL, reason="gan-face-generate wheel not installed")

SMALL_BIGGAN = {"resolution": 128, "channel_width": 4, "z_dim": 16, "num_classes": 10}
SMALL_STYLEGAN2 = {"size": 32, "style_dim": 32, "n_mlp": 2, "max_channels": 32}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These generators are small: one thread avoids OpenMP spin contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def face() -> FaceDCGAN:
    if not HAS_FACE_WHEEL:
        pytest.skip("gan-face-generate wheel not installed")
    return FaceDCGAN()


@pytest.fixture(scope="module")
def biggan() -> BigGANDeep:
    return BigGANDeep(random_init=True, **SMALL_BIGGAN)


@pytest.fixture(scope="module")
def stylegan() -> StyleGAN2:
    return StyleGAN2(random_init=True, **SMALL_STYLEGAN2)


def _inputs(prior: Prior, n: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    latent = prior.sample_latent(n, generator=_rng(1))
    labels = torch.arange(n) % prior.num_classes if prior.num_classes else None
    return latent, prior.condition(labels)


# -- face-dcgan -------------------------------------------------------------------------------------------------
@needs_wheel
def test_face_dcgan_loads_strictly_and_renders_unit_range(face: FaceDCGAN) -> None:
    wheel_state = torch.load(dcgan_module.wheel_weights_path(), map_location="cpu", weights_only=True)
    assert set(face.state_dict()) == set(wheel_state["netG_state_dict"])
    assert all(not p.requires_grad for p in face.parameters()) and not face.training

    images = face(face.sample_latent(3, generator=_rng()))

    assert images.shape == (3, 3, 64, 64)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert float(images.std()) > 0.05  # a face, not a constant


@needs_wheel
def test_face_dcgan_stage_shapes(face: FaceDCGAN) -> None:
    z, _ = _inputs(face)
    expected = [(100,), (512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32)]

    shapes = [tuple(face.feature(k, z).shape[1:]) for k in range(face.num_stages)]

    assert face.stage_names == ["z", "f1", "f2", "f3", "f4"]
    assert shapes == expected == face.stage_shapes
    assert face.native_shape == (3, 64, 64) and face.num_classes is None and face.condition(None) is None


def _assert_stagewise_equals_forward(prior: Prior) -> None:
    latent, cond = _inputs(prior)
    full = prior(latent, cond)
    for k in range(prior.num_stages):
        h = prior.feature(k, latent, cond)
        assert tuple(h.shape[1:]) == prior.stage_shapes[k]
        again = prior.forward_from(k, h, cond, latent=latent)
        assert torch.equal(again, full), f"stage {k} ({prior.stage_names[k]})"


def _assert_gradients_reach_stage_variables(prior: Prior) -> None:
    latent, cond = _inputs(prior)
    for k in range(prior.num_stages):
        start = prior.stage_variables(k, latent, cond)
        trainable = {n for n in start if prior.projection_kind(n) != "fixed"}
        variables = {n: v.detach().clone().requires_grad_(n in trainable) for n, v in start.items()}

        image = prior.render(k, variables, cond)
        (image * torch.linspace(0, 1, image.numel()).view_as(image)).sum().backward()

        assert (prior.stage_names[0] if k == 0 else "h") in trainable
        for name in trainable:
            grad = variables[name].grad
            assert grad is not None and torch.isfinite(grad).all(), f"stage {k}, {name}"
            assert float(grad.abs().sum()) > 0, f"stage {k}, {name}"


@needs_wheel
def test_face_dcgan_stagewise_rendering_reproduces_forward(face: FaceDCGAN) -> None:
    _assert_stagewise_equals_forward(face)


@needs_wheel
def test_face_dcgan_gradients_reach_stage_variables(face: FaceDCGAN) -> None:
    _assert_gradients_reach_stage_variables(face)
    assert face.projection_kind("z") == "sphere" and face.projection_kind("h") == "l1"


@needs_wheel
def test_face_dcgan_accepts_user_weights_in_safetensors(face: FaceDCGAN, tmp_path) -> None:
    path = tmp_path / "face.safetensors"
    save_file({k: v.contiguous() for k, v in face.state_dict().items()}, str(path))
    z, _ = _inputs(face)

    reloaded = build_prior("face-dcgan", weights=path)

    assert torch.equal(reloaded(z), face(z))


def test_face_dcgan_without_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dcgan_module.importlib.util, "find_spec", lambda name: None)

    with pytest.raises(DataNotFoundError, match=r"pip install --no-deps gan-face-generate==1\.1\.1"):
        FaceDCGAN()


# -- BigGAN-deep ------------------------------------------------------------------------------------------------
def test_biggan_stagewise_rendering_reproduces_forward(biggan: BigGANDeep) -> None:
    assert biggan.num_stages == 11  # z, then the inputs of layers[1..10] (10 blocks + attention)
    assert biggan.stage_shapes[8] == (8, 64, 64)  # the attention layer's input, at 64 px
    _assert_stagewise_equals_forward(biggan)


def test_biggan_gradients_reach_stage_variables(biggan: BigGANDeep) -> None:
    _assert_gradients_reach_stage_variables(biggan)
    assert biggan.projection_kind("zy") == "fixed"
    z, _ = _inputs(biggan)
    moved = biggan.renormalize("z", 2 * z + 0.5, z)
    assert torch.allclose(moved.norm(dim=1), z.norm(dim=1), rtol=1e-5)


def test_biggan_condition_changes_the_image(biggan: BigGANDeep) -> None:
    z = biggan.sample_latent(2, generator=_rng())

    a = biggan(z, biggan.condition(torch.tensor([1, 1])))
    b = biggan(z, biggan.condition(torch.tensor([6, 6])))

    assert a.shape == (2, 3, 128, 128) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert float((a - b).abs().mean()) > 1e-3


def test_biggan_rejects_bad_labels_and_missing_context(biggan: BigGANDeep) -> None:
    z, cond = _inputs(biggan)
    with pytest.raises(ConfigError, match="classes 0..9"):
        biggan.condition(torch.tensor([0, 10]))
    with pytest.raises(ConfigError, match="class-conditional"):
        biggan(z, None)
    with pytest.raises(ConfigError, match="latent="):
        biggan.forward_from(3, biggan.feature(3, z, cond), cond)


def test_biggan_truncated_latents_stay_in_range() -> None:
    prior = BigGANDeep(random_init=True, truncation=0.5, **SMALL_BIGGAN)

    z = prior.sample_latent(256, generator=_rng())

    assert float(z.abs().max()) <= 1.0 + 1e-6 and float(z.std()) > 0.3


def _sn(prefix: str, shape: tuple[int, ...], bias: bool = True) -> dict[str, tuple[int, ...]]:
    entries = {
        f"{prefix}.weight_orig": shape,
        f"{prefix}.weight_u": (shape[0],),
        f"{prefix}.weight_v": (math.prod(shape[1:]),),
    }
    if bias:
        entries[f"{prefix}.bias"] = (shape[0],)
    return entries


def public_biggan_deep_256_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the public biggan-deep-256 PyTorch checkpoint, from the published architecture.

    Config: ch 128, z 128, 1000 classes, 51 truncation statistics, self-attention before block 8, and the blocks
    (upsample, in, out multipliers of ch) below. Every conv/linear is spectrally normalised (weight_orig/u/v).
    """
    ch, z, classes, stats, cond = 128, 128, 1000, 51, 256
    blocks = [
        (False, 16, 16),
        (True, 16, 16),
        (False, 16, 16),
        (True, 16, 8),
        (False, 8, 8),
        (True, 8, 8),
        (False, 8, 8),
        (True, 8, 4),
        (False, 4, 4),
        (True, 4, 2),
        (False, 2, 2),
        (True, 2, 1),
    ]
    layout = {"embeddings.weight": (z, classes), **_sn("generator.gen_z", (4 * 4 * 16 * ch, cond))}
    index = 0
    for i, (_up, cin, cout) in enumerate(blocks):
        if i == 8:
            c = ch * cin
            p = f"generator.layers.{index}"
            layout.update(_sn(f"{p}.snconv1x1_theta", (c // 8, c, 1, 1), bias=False))
            layout.update(_sn(f"{p}.snconv1x1_phi", (c // 8, c, 1, 1), bias=False))
            layout.update(_sn(f"{p}.snconv1x1_g", (c // 2, c, 1, 1), bias=False))
            layout.update(_sn(f"{p}.snconv1x1_o_conv", (c, c // 2, 1, 1), bias=False))
            layout[f"{p}.gamma"] = (1,)
            index += 1
        p = f"generator.layers.{index}"
        cin, cout, mid = ch * cin, ch * cout, ch * cin // 4
        for j, (a, b, k) in enumerate([(cin, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, cout, 1)]):
            layout[f"{p}.bn_{j}.running_means"] = (stats, a)
            layout[f"{p}.bn_{j}.running_vars"] = (stats, a)
            layout.update(_sn(f"{p}.bn_{j}.scale", (a, cond), bias=False))
            layout.update(_sn(f"{p}.bn_{j}.offset", (a, cond), bias=False))
            layout.update(_sn(f"{p}.conv_{j}", (b, a, k, k)))
        index += 1
    layout.update(
        {
            "generator.bn.weight": (ch,),
            "generator.bn.bias": (ch,),
            "generator.bn.running_means": (stats, ch),
            "generator.bn.running_vars": (stats, ch),
        }
    )
    layout.update(_sn("generator.conv_to_rgb", (ch, ch, 3, 3)))
    return layout


def test_biggan_256_matches_the_public_checkpoint_layout() -> None:
    with torch.device("meta"):
        prior = BigGANDeep(random_init=True, resolution=256)
    ours = {k: tuple(v.shape) for k, v in prior.state_dict().items()}

    public = public_biggan_deep_256_layout()

    assert len(public) == 602
    assert ours == public
    assert ours["generator.gen_z.weight_orig"] == (32768, 256)
    assert ours["generator.layers.8.snconv1x1_theta.weight_orig"] == (64, 512, 1, 1)
    assert ours["generator.layers.12.conv_3.weight_orig"] == (128, 64, 1, 1)
    assert prior.num_stages == 13 and prior.stage_shapes[-1] == (256, 128, 128)


def test_biggan_checkpoint_round_trip_and_mismatch(biggan: BigGANDeep, tmp_path) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save(biggan.state_dict(), path)
    z, cond = _inputs(biggan)

    reloaded = BigGANDeep(weights=tmp_path, **SMALL_BIGGAN)  # a folder holding pytorch_model.bin

    assert torch.equal(reloaded(z, cond), biggan(z, cond))
    with pytest.raises(CheckpointError, match="does not match the biggan"):
        BigGANDeep(weights=path, **{**SMALL_BIGGAN, "channel_width": 8})


# -- StyleGAN2 --------------------------------------------------------------------------------------------------
def test_stylegan2_stagewise_rendering_reproduces_forward(stylegan: StyleGAN2) -> None:
    assert stylegan.stage_names == ["w", "f1", "f2", "f3"]
    assert stylegan.stage_shapes == [(8, 32), (32, 4, 4), (32, 8, 8), (32, 16, 16)]
    _assert_stagewise_equals_forward(stylegan)


def test_stylegan2_stage_variables_and_projections(stylegan: StyleGAN2) -> None:
    w, _ = _inputs(stylegan)

    names = [sorted(stylegan.stage_variables(k, w, None)) for k in range(stylegan.num_stages)]

    assert names[0] == ["noise_0", "noise_1", "noise_2", "noise_3", "noise_4", "w"]  # GIFD: noises < 5 + 2k
    assert names[2] == ["h", "noise_3", "noise_4", "noise_5", "noise_6", "skip", "w"]
    kinds = {n: stylegan.projection_kind(n) for n in names[1]}
    assert kinds == {
        "h": "l1",
        "skip": "fixed",
        "w": "sphere",
        **{f"noise_{i}": "sphere" for i in range(1, 7)},
    }
    moved = stylegan.renormalize("w", w * torch.rand(2, 8, 1) + 0.1, w)
    assert torch.allclose(moved.norm(dim=2), w.norm(dim=2), rtol=1e-5)
    noise = stylegan.stage_variables(0, w, None)["noise_3"]
    moved = stylegan.renormalize("noise_3", 3 * noise + 1, noise)
    assert torch.allclose(moved.flatten(1).norm(dim=1), noise.flatten(1).norm(dim=1), rtol=1e-5)
    with pytest.raises(ConfigError, match="not projected onto a sphere"):
        stylegan.sphere_dims("h")


def test_stylegan2_gradients_reach_stage_variables(stylegan: StyleGAN2) -> None:
    _assert_gradients_reach_stage_variables(stylegan)


def test_upfirdn2d_upsampling_keeps_a_constant_image_constant() -> None:
    image = torch.full((1, 2, 6, 6), 0.7)
    kernel = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1]))
    kernel = kernel / kernel.sum() * 4

    out = upfirdn2d(image, kernel, up=2, pad=(2, 1))

    assert out.shape == (1, 2, 12, 12)
    assert torch.allclose(out[..., 2:-2, 2:-2], torch.full_like(out[..., 2:-2, 2:-2], 0.7))


@pytest.mark.parametrize("upsample", [False, True])
def test_modulated_conv_equals_per_sample_modulated_weights(upsample: bool) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 5, 3, 6, upsample=upsample)
    torch.nn.init.normal_(conv.weight)
    x, style = torch.randn(2, 4, 5, 5), torch.randn(2, 6)

    fast = conv(x, style)

    s = conv.modulation(style)
    slow = []
    for n in range(2):  # StyleGAN2's definition: modulate and demodulate each sample's weight
        weight = conv.scale * conv.weight[0] * s[n].view(1, -1, 1, 1)
        weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if upsample:
            out = conv.blur(F.conv_transpose2d(x[n : n + 1], weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x[n : n + 1], weight, padding=1)
        slow.append(out)
    assert torch.allclose(fast, torch.cat(slow), atol=1e-5)


def public_stylegan2_1024_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of rosinality's ``g_ema`` for FFHQ config-f (1024 px, 512-d styles, 8-layer mapping)."""
    channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    layout: dict[str, tuple[int, ...]] = {}
    for i in range(1, 9):
        layout.update({f"style.{i}.weight": (512, 512), f"style.{i}.bias": (512,)})

    def styled(prefix: str, cin: int, cout: int, k: int, demod_noise: bool = True) -> None:
        layout.update(
            {
                f"{prefix}.conv.weight": (1, cout, cin, k, k),
                f"{prefix}.conv.modulation.weight": (cin, 512),
                f"{prefix}.conv.modulation.bias": (cin,),
            }
        )
        if demod_noise:
            layout.update({f"{prefix}.noise.weight": (1,), f"{prefix}.activate.bias": (cout,)})

    layout["input.input"] = (1, 512, 4, 4)
    styled("conv1", 512, 512, 3)
    layout["to_rgb1.bias"] = (1, 3, 1, 1)
    styled("to_rgb1", 512, 3, 1, demod_noise=False)
    for i, res in enumerate([8, 16, 32, 64, 128, 256, 512, 1024]):
        styled(f"convs.{2 * i}", channels[res // 2], channels[res], 3)
        layout[f"convs.{2 * i}.conv.blur.kernel"] = (4, 4)
        styled(f"convs.{2 * i + 1}", channels[res], channels[res], 3)
        styled(f"to_rgbs.{i}", channels[res], 3, 1, demod_noise=False)
        layout.update({f"to_rgbs.{i}.bias": (1, 3, 1, 1), f"to_rgbs.{i}.upsample.kernel": (4, 4)})
    for i in range(17):
        side = 2 ** ((i + 5) // 2)
        layout[f"noises.noise_{i}"] = (1, 1, side, side)
    return layout


def test_stylegan2_1024_matches_the_public_checkpoint_layout() -> None:
    with torch.device("meta"):
        prior = StyleGAN2(random_init=True)
    ours = {k: tuple(v.shape) for k, v in prior.state_dict().items()}

    public = public_stylegan2_1024_layout()

    assert len(public) == 171
    assert ours == public
    assert prior.num_stages == 9 and prior.latent_shape == (18, 512) and prior.native_shape == (3, 1024, 1024)
    assert prior.stage_shapes[6] == (256, 128, 128)


def test_stylegan2_checkpoint_round_trip_under_g_ema(stylegan: StyleGAN2, tmp_path) -> None:
    path = tmp_path / "g.pt"
    torch.save({"g_ema": stylegan.state_dict(), "latent_avg": torch.zeros(32)}, path)
    w, _ = _inputs(stylegan)

    reloaded = StyleGAN2(weights=path, **SMALL_STYLEGAN2)

    assert torch.equal(reloaded(w), stylegan(w))


def test_stylegan2_refuses_checkpoints_that_need_unsafe_unpickling(stylegan: StyleGAN2, tmp_path) -> None:
    path = tmp_path / "train.pt"
    torch.save({"g_ema": stylegan.state_dict(), "args": argparse.Namespace(size=32)}, path)

    with pytest.raises(CheckpointError, match="unsafe unpickling"):
        StyleGAN2(weights=path, **SMALL_STYLEGAN2)


# -- checkpoints and registry -----------------------------------------------------------------------------------
CORRUPTIBLE = {
    "face-dcgan": FaceDCGAN,
    "biggan": lambda **kw: BigGANDeep(**SMALL_BIGGAN, **kw),
    "stylegan2": lambda **kw: StyleGAN2(**SMALL_STYLEGAN2, **kw),
}


@pytest.mark.parametrize("prior", sorted(CORRUPTIBLE))
@pytest.mark.parametrize("suffix", [".pt", ".tar", ".safetensors"])
def test_corrupt_checkpoint_is_a_one_line_checkpoint_error(tmp_path, prior: str, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(bytes(range(256)) * 8)

    with pytest.raises(CheckpointError, match="broken") as caught:
        CORRUPTIBLE[prior](weights=path)

    assert "\n" not in str(caught.value)


def test_mismatched_and_non_finite_checkpoints_are_checkpoint_errors(stylegan: StyleGAN2, tmp_path) -> None:
    state = {k: v.clone() for k, v in stylegan.state_dict().items()}
    del state["conv1.noise.weight"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    state = {k: v.clone() for k, v in stylegan.state_dict().items()}
    state["input.input"][0, 0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))

    with pytest.raises(CheckpointError, match="1 missing key"):
        StyleGAN2(weights=tmp_path / "missing.safetensors", **SMALL_STYLEGAN2)
    with pytest.raises(CheckpointError, match="NaN"):
        StyleGAN2(weights=tmp_path / "nan.safetensors", **SMALL_STYLEGAN2)
    with pytest.raises(DataNotFoundError):
        StyleGAN2(weights=tmp_path / "absent.pt", **SMALL_STYLEGAN2)


def test_registry_lists_the_priors_and_explains_missing_weights() -> None:
    assert {"face-dcgan", "biggan", "stylegan2"} <= set(PRIORS.names())
    with pytest.raises(ConfigError, match="unknown prior"):
        build_prior("stylegan3")
    with pytest.raises(DataNotFoundError, match="weights=PATH"):
        build_prior("biggan")
    with pytest.raises(DataNotFoundError, match="weights=PATH"):
        build_prior("stylegan2")


def test_stage_index_and_latent_shape_are_checked(stylegan: StyleGAN2) -> None:
    w, _ = _inputs(stylegan)
    with pytest.raises(ConfigError, match="stages 0..3"):
        stylegan.feature(4, w)
    with pytest.raises(ConfigError, match="latents of shape"):
        stylegan(w[:, 0])


# -- adapter ----------------------------------------------------------------------------------------------------
def test_adapter_area_downsizes_and_normalises() -> None:
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)

    out = to_victim(images, image_shape=(3, 32, 32), normalization=(mean, std))

    expected = (F.avg_pool2d(images, 2) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def test_adapter_converts_channels_and_odd_sizes() -> None:
    rgb = torch.rand(2, 3, 64, 64)
    grey = torch.rand(2, 1, 16, 16)

    to_grey = to_victim(rgb, image_shape=(1, 64, 64), normalization=((0.0,), (1.0,)))
    odd = to_victim(rgb, image_shape=(1, 28, 28), normalization=((0.5,), (0.5,)))
    to_rgb = to_victim(grey, image_shape=(3, 32, 32), normalization=((0.0,) * 3, (1.0,) * 3))

    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert torch.allclose(to_grey[:, 0], luma, atol=1e-6)
    assert odd.shape == (2, 1, 28, 28) and float(odd.min()) >= -1.0 - 1e-5 and float(odd.max()) <= 1.0 + 1e-5
    assert to_rgb.shape == (2, 3, 32, 32) and torch.equal(to_rgb[:, 0], to_rgb[:, 2])
    with pytest.raises(ConfigError, match="normalization"):
        to_victim(rgb, image_shape=(3, 32, 32), normalization=((0.5,), (0.5,)))
