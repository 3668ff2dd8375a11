"""verify_model: benign models pass every check; each malicious modification fails the check made for it."""

import copy
import re

import pytest
import torch
from torch import nn

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.base import ServerContext
from fedinvert.errors import ConfigError
from fedinvert.models import MODELS, build_model, last_linear
from fedinvert.verify import Finding, Verdict, verify_model
from fedinvert.verify.checks import BIAS_SPREAD_MAX, RANK_RATIO_MIN

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = {"in_channels": 1, "num_classes": 10, "image_size": 28}
SMALL = {"convnet": {"width": 0.25}, "resnet18": {"width": 0.25}, "resnet18-imagenet": {"width": 0.25},
         "resnet34": {"width": 0.25}}


def spec(name, **options):
    return {"name": name, **SHAPE, **{**SMALL.get(name, {}), **options}}


def build(name, seed=0, **options):
    return build_model(name, seed=seed, **SHAPE, **{**SMALL.get(name, {}), **options})


def trap(model, factor):
    """Boenisch et al.'s trap rows by hand: half of each first-layer row negative, those scaled by ``factor``."""
    sent = copy.deepcopy(model)
    layer = next(m for m in sent.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = layer.weight.abs()
        negative = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)).argsort(1) < w.shape[1] // 2
        layer.weight.copy_(torch.where(negative, -factor * w, w))
    return sent


def fishing(model, magnitude, target=3):
    """Wen et al.'s fishing head by hand: every row but the target's zeroed, their biases set to ``magnitude``."""
    sent = copy.deepcopy(model)
    head = last_linear(sent)
    with torch.no_grad():
        keep = torch.arange(head.out_features) == target
        head.weight.mul_(keep[:, None].float())
        head.bias.copy_(torch.where(keep, head.bias, torch.full_like(head.bias, magnitude)))
    return sent


def imprinted(name, bins, scale=1e-3):
    public = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    context = ServerContext(image_shape=(1, 28, 28), num_classes=10, normalization=((0.286,), (0.353,)),
                            public=public)
    return ATTACKS.build("imprint", bins=bins, scale=scale, device="cpu").modify_model(build(name), context)


def finding(verdict, check, layer=None):
    return next(f for f in verdict.findings if f.check == check and (layer is None or f.layer == layer))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_benign_inits_of_every_architecture_pass(name, seed):
    model = build(name, seed=seed)
    verdict = verify_model(model, spec(name))
    assert not verdict.suspicious, verdict.summary()
    # the same verdict from the state dict and from a module reference
    assert not verify_model(model.state_dict(), build(name, seed=seed + 5)).suspicious
    assert {f.check for f in verdict.findings} >= {"architecture", "non_finite", "imprint_rows", "classifier_rows"}


@pytest.mark.parametrize("bins", [10, 100, 1000])
@pytest.mark.parametrize("victim", ["convnet", "mlp"])
def test_imprint_is_detected_by_its_rank_one_rows(bins, victim):
    sent = imprinted(victim, bins)
    verdict = verify_model(sent.state_dict(), spec(victim))
    assert verdict.suspicious
    rows = finding(verdict, "imprint_rows", "imprint.encoder.weight")
    assert not rows.passed and rows.value < 1e-6 and rows.threshold == RANK_RATIO_MIN
    assert "biases in sorted order at 100 % of steps" in rows.reason
    arch = finding(verdict, "architecture")
    assert not arch.passed and arch.value == 5  # wrapper prefix + 4 block tensors
    assert "under 'victim.'" in arch.reason
    if victim == "convnet":  # a linear layer in front of the first convolution
        assert not finding(verdict, "input_linear").passed
    else:  # the MLP's first layer is linear by design: no input_linear check
        assert all(f.check != "input_linear" for f in verdict.findings)


def test_imprint_module_flags_the_layers_before_the_first_convolution():
    verdict = verify_model(imprinted("lenet5", 100, scale=0.1), spec("lenet5"))
    linear = finding(verdict, "input_linear")
    assert linear.value == 2 and "imprint.encoder.weight" in linear.reason


@pytest.mark.parametrize("factor", [1.2, 1.5, 3.0])
def test_hand_built_trap_weights_are_detected_by_their_magnitude_ratio(factor):
    verdict = verify_model(trap(build("mlp"), factor), spec("mlp"))
    assert verdict.failed_checks == ("trap_weights",)
    found = finding(verdict, "trap_weights")
    assert found.layer == "layers.fc1.weight"
    assert float(re.search(r"magnitude ratio ([0-9.]+)", found.reason).group(1)) == pytest.approx(factor, rel=0.03)
    assert found.value > 4 * found.threshold  # every row skewed alike: the effect is large next to the spread


def test_a_mostly_negative_first_layer_fails_the_sign_balance():
    model = build("mlp", layers=2, hidden=64)
    with torch.no_grad():
        w = model.layers.fc1.weight
        flip = torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) < 0.6
        w.copy_(torch.where(flip, -w.abs(), w))  # 60 % forced negative + half of the rest: ≈ 80 %
    verdict = verify_model(model, spec("mlp", layers=2, hidden=64))
    assert set(verdict.failed_checks) == {"trap_weights", "sign_balance"}  # magnitudes skewed about the median too
    assert finding(verdict, "sign_balance").value == pytest.approx(0.80, abs=0.01)


@pytest.mark.parametrize("name", ["convnet", "mlp", "lenet-dlg"])
@pytest.mark.parametrize("magnitude", [5.0, 100.0])
def test_hand_built_fishing_is_detected_by_the_classifier_checks(name, magnitude):
    verdict = verify_model(fishing(build(name), magnitude), spec(name))
    assert set(verdict.failed_checks) == {"classifier_rows", "classifier_bias"}
    assert finding(verdict, "classifier_rows").value == 0.0
    assert finding(verdict, "classifier_bias").value > 3 * BIAS_SPREAD_MAX
    assert "9 of 10 rows below" in finding(verdict, "classifier_rows").reason


def test_non_finite_values_are_counted():
    state = build("lenet5").state_dict()
    state["features.conv1.weight"][0, 0, 0, :2] = torch.tensor([float("nan"), float("inf")])
    verdict = verify_model(state, spec("lenet5"))
    assert verdict.failed_checks == ("non_finite",)
    assert finding(verdict, "non_finite").value == 2


def test_changed_shapes_dtypes_and_keys_are_architecture_changes():
    state = build("convnet").state_dict()
    state["fc.weight"] = state["fc.weight"].double()
    state["layer1.conv.weight"] = torch.zeros(8, 1, 5, 5)
    state["extra.weight"] = torch.zeros(3)
    del state["layer2.norm.bias"]
    arch = finding(verify_model(state, spec("convnet")), "architecture")
    assert not arch.passed and arch.value == 4
    for text in ("1 extra keys (extra.weight)", "1 missing keys (layer2.norm.bias)",
                 "layer1.conv.weight: [8, 1, 5, 5] instead of [8, 1, 3, 3]", "fc.weight: torch.float64 instead of"):
        assert text in arch.reason


def test_a_different_model_option_is_an_architecture_change():
    arch = finding(verify_model(build("convnet", norm="group"), spec("convnet")), "architecture")
    assert arch.value == 12 and "12 missing keys (layer1.norm.running_mean" in arch.reason  # 3 BN buffers × 4
    arch = finding(verify_model(build("convnet", width=0.5), spec("convnet")), "architecture")
    assert not arch.passed and "shapes changed (layer1.conv.weight: [16, 1, 3, 3] instead of [8, 1, 3, 3])" in arch.reason


@pytest.mark.parametrize("reference", [{"name": "nope", **SHAPE}, {"name": "mlp", "in_channels": 1}, 42, {},
                                       {"name": "mlp", **SHAPE, "depth": 3}])
def test_a_bad_reference_is_a_config_error(reference):
    with pytest.raises(ConfigError):
        verify_model(build("mlp"), reference)


def test_summary_has_one_line_per_finding_and_the_verdict():
    verdict = verify_model(fishing(build("mlp"), 20.0), spec("mlp"))
    lines = verdict.summary().splitlines()
    assert len(lines) == len(verdict.findings) + 1
    assert lines[-1].startswith("SUSPICIOUS: 2 of")
    assert any(line.startswith("FAIL classifier_bias [layers.head.bias]") for line in lines)
    clean = Verdict((Finding("architecture", True, "same", 0.0, 0.0),))
    assert not clean.suspicious and clean.summary().splitlines()[-1] == "clean: all 1 findings passed"


@pytest.mark.parametrize("rate", [0.01, 0.1])
def test_the_registered_trap_weights_are_detected(rate):
    public = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    context = ServerContext(image_shape=(1, 28, 28), num_classes=10, normalization=((0.286,), (0.353,)),
                            public=public)
    sent = ATTACKS.build("trap_weights", rate=rate, device="cpu").modify_model(build("mlp"), context)
    verdict = verify_model(sent.state_dict(), spec("mlp"))
    assert verdict.failed_checks == ("trap_weights", "bias_scale")
    # measured here: effect 3.3 at rate 0.01 (scale 1.16), 1.75 at rate 0.1 (scale 1.08; on noise images
    # the scale is smaller than on Fashion-MNIST, where rate 0.1 gives 3.2–3.7)
    assert finding(verdict, "trap_weights").value > 1.5


@pytest.mark.skipif("fishing" not in ATTACKS, reason="the fishing attack is not registered yet")
@pytest.mark.parametrize("name", ["convnet", "mlp"])
@pytest.mark.parametrize("magnitude", [5.0, 100.0])
def test_the_registered_fishing_head_is_detected(name, magnitude):
    context = ServerContext(image_shape=(1, 28, 28), num_classes=10, normalization=((0.286,), (0.353,)))
    sent = ATTACKS.build("fishing", magnitude=magnitude, device="cpu").modify_model(build(name), context)
    verdict = verify_model(sent.state_dict(), spec(name))
    assert set(verdict.failed_checks) == {"classifier_rows", "classifier_bias"}
    assert finding(verdict, "classifier_bias").value > 3 * BIAS_SPREAD_MAX


def test_a_trap_at_rate_one_half_is_caught_by_its_biases():
    # rows that fire for half the inputs are hardly skewed (ratio ≈ 1); their thresholds still sit in the data
    public = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    context = ServerContext(image_shape=(1, 28, 28), num_classes=10, normalization=((0.286,), (0.353,)),
                            public=public)
    sent = ATTACKS.build("trap_weights", rate=0.5, device="cpu").modify_model(build("mlp"), context)
    verdict = verify_model(sent.state_dict(), spec("mlp"))
    assert verdict.failed_checks == ("bias_scale",)
    scale = finding(verdict, "bias_scale")
    assert scale.layer == "layers.fc1.bias" and scale.value > 1.5 * scale.threshold


def test_the_bias_scale_of_an_init_is_one_over_the_root_of_the_fan_in():
    found = finding(verify_model(build("mlp", seed=3), spec("mlp")), "bias_scale")
    assert found.passed and found.value == pytest.approx(1 / 28, rel=0.1) and found.threshold == 0.25
