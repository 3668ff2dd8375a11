"""Defences match their closed forms; the adaptive attacker's replay equals their deterministic part."""

import json
import math

import pytest
import torch

from fedinvert.attacks.objectives import GradientMatcher
from fedinvert.cli import main
from fedinvert.config import resolve_config
from fedinvert.defenses import (
    DEFENSES,
    Clipping,
    GaussianNoise,
    LaplaceNoise,
    Pruning,
    Quantization,
    Soteria,
    replay_transform,
)
from fedinvert.errors import ConfigError
from fedinvert.fl import FedAvgClient, parameter_gradients
from fedinvert.models import build_model
from fedinvert.observation import DefenseSpec
from fedinvert.runner import build_scenario

SMALL = ["model=lenet-dlg", "dataset=synthetic", "image_size=16", "seed=0"]


def _victim(name="lenet-dlg", **options):
    return build_model(name, in_channels=3, num_classes=5, image_size=16, seed=0, **options).eval()


def _batch(n=4):
    gen = torch.Generator().manual_seed(0)
    return torch.randn((n, 3, 16, 16), generator=gen), torch.tensor([0, 3, 1, 4, 2, 1][:n])


def _update(model=None, n=4):
    model = model or _victim()
    x, y = _batch(n)
    return model, x, y, parameter_gradients(model, x, y)


def _random_update(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"a": torch.randn((40, 30), generator=gen), "b": torch.randn(50, generator=gen),
            "c": 3 * torch.randn((8, 4, 3, 3), generator=gen)}


def _norm(tensors):
    return math.sqrt(sum(float((t * t).sum()) for t in tensors))


# -- every registered defence --------------------------------------------------------------------------
@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_applies_and_its_spec_rebuilds_it(name):
    if name == "dp_sgd":
        pytest.importorskip("opacus")
    model, x, y, update = _update()
    defense = DEFENSES.build(name)
    out = defense.apply(update, model=model, inputs=x, labels=y, rng=torch.Generator().manual_seed(0))
    assert list(out) == list(update)
    for key in update:
        assert out[key].shape == update[key].shape and torch.isfinite(out[key]).all()
    spec = defense.spec()
    assert spec.name == name
    assert DEFENSES.build(spec.name, **spec.params).spec() == spec
    assert json.loads(json.dumps(spec.params)) == spec.params  # public parameters are plain JSON


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [("clipping", {"bound": -1.0}, "clipping.bound"), ("pruning", {"prune_ratio": 1.0}, "prune_ratio"),
     ("quantization", {"bits": 1}, "bits"), ("gaussian_noise", {"std": -0.1}, "std"),
     ("soteria", {"prune_ratio": 1.5}, "prune_ratio"), ("secure_aggregation", {"clients": 0}, "clients")],
)
def test_bad_parameters_are_config_errors(name, params, key):
    with pytest.raises(ConfigError, match=key):
        DEFENSES.build(name, **params)


# -- closed forms ----------------------------------------------------------------------------------------
def test_gaussian_noise_has_the_requested_std():
    zeros = {"w": torch.zeros(400, 500)}
    out = GaussianNoise(std=0.05).apply(zeros, model=None, inputs=None, labels=None,
                                        rng=torch.Generator().manual_seed(1))["w"]
    # 200,000 draws: the std's relative standard error is 1/sqrt(2N) ≈ 0.16 %
    assert float(out.std()) == pytest.approx(0.05, rel=0.01)
    assert abs(float(out.mean())) < 0.05 * 0.01
    same = GaussianNoise(std=0.05).apply(zeros, model=None, inputs=None, labels=None,
                                         rng=torch.Generator().manual_seed(1))["w"]
    assert torch.equal(out, same)  # seeded


def test_laplace_noise_has_the_requested_scale():
    zeros = {"w": torch.zeros(400, 500)}
    out = LaplaceNoise(scale=0.02).apply(zeros, model=None, inputs=None, labels=None,
                                         rng=torch.Generator().manual_seed(2))["w"]
    assert float(out.abs().mean()) == pytest.approx(0.02, rel=0.01)  # E|X| = b
    assert float(out.std()) == pytest.approx(math.sqrt(2) * 0.02, rel=0.02)  # std = √2·b


def test_global_clipping_scales_the_update_to_the_bound():
    update = _random_update()
    assert _norm(update.values()) > 5
    out = Clipping(bound=5.0).apply(update, model=None, inputs=None, labels=None)
    assert _norm(out.values()) == pytest.approx(5.0, rel=1e-6)
    factor = float(out["a"][0, 0] / update["a"][0, 0])
    for key in update:  # one common factor: directions kept
        torch.testing.assert_close(out[key], factor * update[key])
    small = Clipping(bound=1e6).apply(update, model=None, inputs=None, labels=None)
    assert all(torch.equal(small[k], update[k]) for k in update)


def test_per_layer_clipping_bounds_every_tensor():
    update = _random_update()
    out = Clipping(bound=10.0, per_layer=True).apply(update, model=None, inputs=None, labels=None)
    for key in update:
        expected = min(float(update[key].norm()), 10.0)
        assert float(out[key].norm()) == pytest.approx(expected, rel=1e-6), key
    assert float(update["b"].norm()) < 10.0 and torch.equal(out["b"], update["b"])  # already within: unchanged


@pytest.mark.parametrize("ratio", [0.2, 0.9, 0.99])
def test_pruning_zeroes_exactly_the_smallest_fraction(ratio):
    update = _random_update()
    out = Pruning(prune_ratio=ratio).apply(update, model=None, inputs=None, labels=None)
    for key, t in update.items():
        pruned = out[key] == 0
        assert int(pruned.sum()) == math.floor(ratio * t.numel() + 1e-9), key
        assert torch.equal(out[key][~pruned], t[~pruned])
        assert float(t[pruned].abs().max()) <= float(t[~pruned].abs().min())


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_quantization_levels_and_error_bound(bits):
    update = _random_update()
    out = Quantization(bits=bits).apply(update, model=None, inputs=None, labels=None)
    levels = 2 ** (bits - 1) - 1
    for key, t in update.items():
        step = float(t.abs().max()) / levels
        assert out[key].unique().numel() <= 2**bits - 1
        assert float((out[key] - t).abs().max()) <= step / 2 + 1e-6
        assert float(out[key].abs().max()) == pytest.approx(float(t.abs().max()), rel=1e-6)  # extreme kept
    zero = Quantization(bits=4).apply({"z": torch.zeros(3)}, model=None, inputs=None, labels=None)["z"]
    assert torch.equal(zero, torch.zeros(3))


def test_dp_sgd_clips_every_per_sample_gradient():
    pytest.importorskip("opacus")
    from fedinvert.defenses import DPSGD

    model, x, y, _ = _update()
    bound = 0.05
    out = DPSGD(max_grad_norm=bound, noise_multiplier=0.0).apply({}, model=model, inputs=x, labels=y)
    # slow reference: per-sample gradients, each clipped as opacus does, averaged
    per_sample = [parameter_gradients(model, x[i : i + 1], y[i : i + 1]) for i in range(len(x))]
    norms = [_norm(g.values()) for g in per_sample]
    assert min(norms) > bound  # the bound is active for every sample
    expected = {k: sum(g[k] * min(1.0, bound / (n + 1e-6)) for g, n in zip(per_sample, norms, strict=True)) / len(x)
                for k in per_sample[0]}
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=1e-7)
    assert _norm(out.values()) <= bound + 1e-6
    # noise: N(0, (σC)²) on the sum, divided by the batch size
    noisy = DPSGD(max_grad_norm=bound, noise_multiplier=2.0).apply(
        {}, model=model, inputs=x, labels=y, rng=torch.Generator().manual_seed(0))
    diff = torch.cat([(noisy[k] - out[k]).flatten() for k in out])
    assert float(diff.std()) == pytest.approx(2.0 * bound / len(x), rel=0.05)
    eps = [DPSGD(noise_multiplier=s).epsilon(steps=10, sample_rate=0.25) for s in (0.7, 1.0, 2.0)]
    assert eps[0] > eps[1] > eps[2] > 0
    assert DPSGD(noise_multiplier=0.0).epsilon(steps=1, sample_rate=1.0) == math.inf


def test_soteria_zeroes_exactly_the_pruned_columns():
    model, x, y, update = _update()
    soteria = Soteria(prune_ratio=0.4)
    out = soteria.apply(update, model=model, inputs=x, labels=y)
    pruned = soteria.pruned_features(model, x)
    weight, features = update["fc.weight"], update["fc.weight"].shape[1]
    assert len(pruned) == math.floor(0.4 * features)
    keep = torch.ones(features, dtype=torch.bool)
    keep[pruned] = False
    assert torch.equal(out["fc.weight"][:, pruned], torch.zeros(weight.shape[0], len(pruned)))
    assert torch.equal(out["fc.weight"][:, keep], weight[:, keep])
    assert all(torch.equal(out[k], update[k]) for k in update if k != "fc.weight")


def test_soteria_scores_match_a_per_feature_reference():
    model, x, _, _ = _update()
    scores = Soteria(chunk=7).feature_scores(model, x)
    captured = []
    handle = model.fc.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
    for f in (0, 5, 40):
        total = 0.0
        for i in range(len(x)):
            xi = x[i : i + 1].clone().requires_grad_(True)
            captured.clear()
            model(xi)
            r = captured[0].flatten(1)[0, f]
            (g,) = torch.autograd.grad(r, xi)
            total += float(g.norm()) / abs(float(r.detach()))
        assert float(scores[f]) == pytest.approx(total, rel=1e-4)
    handle.remove()


# -- the adaptive replay -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "defense",
    [Clipping(bound=0.5), Clipping(bound=0.05, per_layer=True), Pruning(prune_ratio=0.9), Soteria(prune_ratio=0.5),
     Quantization(bits=4)],
    ids=repr,
)
def test_replay_on_the_true_update_equals_the_defence(defense):
    model, x, y, update = _update()
    names = list(update)
    observed = defense.apply(update, model=model, inputs=x, labels=y)
    replayed = defense.replay(list(update.values()), list(observed.values()), names=names)
    for name, r in zip(names, replayed, strict=True):
        torch.testing.assert_close(r, observed[name], rtol=1e-6, atol=0)


def test_noise_dp_and_aggregation_are_not_replayed():
    specs = [DefenseSpec("gaussian_noise", {"std": 0.1}), DefenseSpec("laplace_noise", {"scale": 0.1}),
             DefenseSpec("secure_aggregation", {"clients": 2})]
    assert replay_transform(specs, names=["w"], observed=[torch.ones(1)]) is None


@pytest.mark.parametrize("functional", [False, True])
def test_adaptive_matcher_replays_the_declared_pipeline(functional):
    # clipping, noise, then pruning: the true batch's replayed dummy equals the observation up to the noise
    cfg = resolve_config([*SMALL, "batch_size=2", "threat.labels=known", "defense=[clipping,gaussian_noise,pruning]",
                          "defense.clipping.bound=0.5", "defense.gaussian_noise.std=1e-4",
                          "defense.pruning.prune_ratio=0.9"])
    scenario = build_scenario(cfg)
    obs = scenario.observation
    assert [d.name for d in obs.defenses] == ["clipping", "gaussian_noise", "pruning"]
    x, y = obs.normalize(scenario.private), scenario.private_labels
    render = lambda v: (v, y)  # noqa: E731
    adaptive = GradientMatcher(obs, render=render, adaptive=True, functional=functional)
    dummy = adaptive.parameter_gradient(x, y)
    for d, t in zip(dummy, adaptive.target, strict=True):
        assert torch.equal(d == 0, t == 0)  # the same support
    assert adaptive.distance(x, y) < 0.01
    plain = GradientMatcher(obs, render=render, adaptive=False, functional=functional)
    assert plain.distance(x, y) > 10 * adaptive.distance(x, y)
    grads, _, _ = adaptive.step([(x + 0.1).unsqueeze(0)])
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_secure_aggregation_observes_the_sum_of_the_clients_updates(protocol):
    local = ["protocol.local_batch_size=1"] if protocol == "fedavg" else []
    cfg = resolve_config([*SMALL, "batch_size=2", f"protocol={protocol}", *local, "defense=secure_aggregation",
                          "defense.secure_aggregation.clients=3", "threat.labels=known"])
    scenario = build_scenario(cfg)
    obs = scenario.observation
    assert obs.batch_size == 6 and scenario.private.shape[0] == 6 and len(set(scenario.info["indices"])) == 6
    x, y = obs.normalize(scenario.private), scenario.private_labels
    if protocol == "fedsgd":
        parts = [parameter_gradients(obs.model, x[2 * k : 2 * k + 2], y[2 * k : 2 * k + 2]) for k in range(3)]
    else:
        client = FedAvgClient(local_batch_size=1, shuffle_seed=scenario.info["protocol"]["shuffle_seed"])
        parts = [client.update(obs.model, x[2 * k : 2 * k + 2], y[2 * k : 2 * k + 2]) for k in range(3)]
    for name, tensor in obs.update.items():
        torch.testing.assert_close(tensor, sum(p[name] for p in parts), rtol=1e-5, atol=1e-8)
    # the adaptive attacker models the K clients: its dummy update of the true images is the observation
    matcher = GradientMatcher(obs, render=lambda v: (v, y), adaptive=True)
    assert matcher.clients == 3
    for d, t in zip(matcher.parameter_gradient(x, y), matcher.target, strict=True):
        torch.testing.assert_close(d, t, rtol=1e-4, atol=1e-7)


def test_secure_aggregation_needs_k_times_b_indices():
    cfg = resolve_config([*SMALL, "batch_size=2", "dataset.indices=[0,1]", "defense=secure_aggregation",
                          "defense.secure_aggregation.clients=2"])
    with pytest.raises(ConfigError, match="4 indices"):
        build_scenario(cfg)


def test_unknown_defenses_are_not_declared():
    cfg = resolve_config([*SMALL, "batch_size=1", "defense=clipping", "threat.defenses=unknown"])
    assert build_scenario(cfg).observation.defenses == ()


# -- the command line ------------------------------------------------------------------------------------
def test_cli_runs_a_defence_list_and_records_it(tmp_path, fast_cfg, capsys):
    out = tmp_path / "run"
    args = ["attack", *SMALL, "batch_size=1", "attack=inverting_gradients", "attack.iterations=3",
            "defense=[clipping,gaussian_noise]", "defense.gaussian_noise.std=0.01", "attack.adaptive=true",
            *fast_cfg, f"out={out}"]
    assert main(args) == 0
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert list(config["defense"]) == ["clipping", "gaussian_noise"]
    assert config["defense"]["gaussian_noise"]["std"] == 0.01 and config["defense"]["clipping"]["bound"] == 4.0
    assert config["attack"]["adaptive"] is True
    # the declared defences survive the observation file
    again = tmp_path / "again"
    assert main(["attack", f"observation={out}", "attack.iterations=2", "attack.adaptive=true", *fast_cfg,
                 f"out={again}"]) == 0


def test_cli_unknown_defence_is_one_line(capsys, fast_cfg, one_error_line):
    assert main(["attack", *SMALL, "defense=[clipping,magic]", *fast_cfg]) == 2
    assert "unknown defense 'magic'" in one_error_line(capsys)


def test_cli_dp_sgd_with_batch_norm_names_group_norm(capsys, fast_cfg, one_error_line):
    pytest.importorskip("opacus")
    assert main(["attack", "model=convnet", "dataset=synthetic", "image_size=16", "defense=dp_sgd",
                 *fast_cfg]) == 2
    assert "model.norm=group" in one_error_line(capsys)


def test_dp_sgd_reports_epsilon_in_run_json(tmp_path, fast_cfg):
    pytest.importorskip("opacus")
    out = tmp_path / "dp"
    assert main(["attack", "model=convnet", "model.norm=group", "model.width=0.25", "dataset=synthetic",
                 "image_size=16", "batch_size=2", "protocol=fedavg", "protocol.local_batch_size=1",
                 "protocol.local_epochs=2", "defense=dp_sgd", "defense.dp_sgd.noise_multiplier=1.0",
                 "attack.iterations=2", "attack.fedavg=none", *fast_cfg, f"out={out}"]) == 0
    dp = json.loads((out / "run.json").read_text())["scenario"]["dp_sgd"]
    assert dp["steps"] == 4 and dp["sample_rate"] == 0.5 and dp["delta"] == 1e-5
    assert 0 < dp["epsilon"] < 100
