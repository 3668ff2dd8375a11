"""FedAvg: the client's local training, and the attacker's unrolled simulation of it (strong / weak / none)."""

import json

import pytest
import torch
import yaml
from torch import nn

from fedinvert.attacks.objectives import GradientMatcher
from fedinvert.cli import main
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError, MissingCapabilityError
from fedinvert.fl import (
    GUESSED_LOCAL_TRAINING,
    FedAvgClient,
    FedSGDClient,
    local_batches,
    model_loss,
    simulate_local_training,
)
from fedinvert.models import build_model
from fedinvert.observation import LocalTraining, Observation
from fedinvert.runner import build_scenario

NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _victim(name="lenet-dlg", **options):
    return build_model(name, in_channels=3, num_classes=5, image_size=16, seed=0, **options)


def _batch(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, 3, 16, 16), generator=gen), torch.tensor([0, 3, 1, 3, 2, 4, 0, 1][:n])


def _obs(model, update, kind="weight_delta", local=None, n=4):
    return Observation(model=model, update=update, kind=kind, image_shape=(3, 16, 16), num_classes=5,
                       normalization=NORM, batch_size=n, local_training=local)


def test_local_batches_are_seeded_and_cover_every_sample_each_epoch():
    local = LocalTraining(epochs=3, batch_size=2, lr=0.1, shuffle_seed=7)
    batches = local_batches(5, local)
    assert len(batches) == 3 * 3 and [len(b) for b in batches[:3]] == [2, 2, 1]
    for epoch in range(3):
        assert sorted(torch.cat(batches[3 * epoch : 3 * epoch + 3]).tolist()) == [0, 1, 2, 3, 4]
    assert all(torch.equal(a, b) for a, b in zip(batches, local_batches(5, local), strict=True))
    assert torch.cat(batches[:3]).tolist() != torch.cat(batches[3:6]).tolist()  # reshuffled per epoch
    plain = local_batches(5, LocalTraining(epochs=1, batch_size=2, lr=0.1, shuffle_seed=None))
    assert torch.cat(plain).tolist() == [0, 1, 2, 3, 4]


def test_one_full_batch_step_is_minus_lr_times_the_fedsgd_gradient():
    model, (x, y) = _victim(), _batch()
    grad = FedSGDClient().update(model, x, y)
    delta = FedAvgClient(local_epochs=1, local_batch_size=4, lr=0.1).update(model, x, y)
    for name in grad:
        torch.testing.assert_close(delta[name], -0.1 * grad[name], rtol=1e-5, atol=1e-7)


def test_client_leaves_the_global_model_unchanged():
    model, (x, y) = _victim("convnet", width=0.25), _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FedAvgClient(local_epochs=2, local_batch_size=2, lr=0.5, mode="train").update(model, x, y)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_simulation_reproduces_the_clients_delta(momentum):
    model, (x, y) = _victim(), _batch()
    client = FedAvgClient(local_epochs=2, local_batch_size=2, lr=0.05, momentum=momentum, shuffle_seed=3)
    real = client.update(model, x, y)
    params = {n: p.detach() for n, p in model.named_parameters()}
    simulated = simulate_local_training(model_loss(model), params, x, y, client.local_training())
    for name in real:
        torch.testing.assert_close(simulated[name], real[name], rtol=0, atol=1e-6)
    # a different shuffle seed gives a different delta: the order matters and is reproduced
    other = simulate_local_training(model_loss(model), params, x, y, LocalTraining(
        epochs=2, batch_size=2, lr=0.05, momentum=momentum, shuffle_seed=4))
    assert max((other[n] - real[n]).abs().max() for n in real) > 1e-6


def test_simulation_is_differentiable_with_respect_to_the_inputs():
    model, (x, y) = _victim(), _batch()
    local = LocalTraining(epochs=2, batch_size=2, lr=0.05, momentum=0.9, shuffle_seed=1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = x.requires_grad_(True)
    delta = simulate_local_training(model_loss(model), params, x, y, local)
    (grad,) = torch.autograd.grad(sum((d**2).sum() for d in delta.values()), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_simulation_passes_gradcheck_on_a_tiny_double_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    params = {n: p.detach() for n, p in net.named_parameters()}
    labels = torch.tensor([0, 2, 1, 2])
    local = LocalTraining(epochs=2, batch_size=2, lr=0.3, momentum=0.9, shuffle_seed=5)

    def delta(x):
        out = simulate_local_training(model_loss(net), params, x, labels, local)
        return torch.cat([t.flatten() for t in out.values()])

    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(delta, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_strong_matcher_reproduces_the_observation_eagerly_and_functionally(mode):
    # BatchNorm victim: train mode uses batch statistics in the client and in the simulation alike
    model, (x, y) = _victim("convnet", width=0.25), _batch()
    client = FedAvgClient(local_epochs=2, local_batch_size=2, lr=0.05, momentum=0.9, mode=mode, shuffle_seed=3)
    obs = _obs(model, client.update(model, x, y), local=client.local_training())
    start = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    results = []
    for functional in (False, True):
        matcher = GradientMatcher(obs, render=lambda v: (v, y), fedavg="strong", functional=functional)
        for dummy, target in zip(matcher.parameter_gradient(x, y), matcher.target, strict=True):
            torch.testing.assert_close(dummy, target, rtol=0, atol=1e-6)
        grads, loss, dist = matcher.step([start.unsqueeze(0)])
        assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
        results.append((grads[0], dist))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def test_functional_matcher_runs_restarts_under_vmap():
    model, (x, y) = _victim(), _batch()
    client = FedAvgClient(local_epochs=1, local_batch_size=2, lr=0.05, shuffle_seed=0)
    obs = _obs(model, client.update(model, x, y), local=client.local_training())
    eager = GradientMatcher(obs, render=lambda v: (v, y), functional=False)
    batched = GradientMatcher(obs, render=lambda v: (v, y), functional=True)
    starts = torch.randn((2, *x.shape), generator=torch.Generator().manual_seed(1))
    g_eager, _, d_eager = eager.step([starts])
    g_vmap, _, d_vmap = batched.step([starts])
    torch.testing.assert_close(g_vmap[0], g_eager[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(d_vmap, d_eager, rtol=1e-5, atol=1e-7)


def test_weak_and_none_modes():
    model, (x, y) = _victim(), _batch()
    client = FedAvgClient(local_epochs=1, local_batch_size=4, lr=0.02, shuffle_seed=None)
    delta = client.update(model, x, y)
    obs = _obs(model, delta, local=client.local_training())
    # none: the dummy gradient against −Δ/η; one full-batch step makes them equal
    none = GradientMatcher(obs, render=lambda v: (v, y), fedavg="none")
    for dummy, target in zip(none.parameter_gradient(x, y), none.target, strict=True):
        torch.testing.assert_close(dummy, target, rtol=1e-4, atol=1e-6)
    assert none.distance(x, y) < 1e-6
    # weak: the survey's guess (2 epochs of batch 8 at lr 1e-3) is the wrong simulation here
    weak = GradientMatcher(obs, render=lambda v: (v, y), fedavg="weak")
    assert weak.local == GUESSED_LOCAL_TRAINING
    assert weak.distance(x, y) > 1e-6
    # without known hyper-parameters: weak and none work, strong is refused
    unknown = _obs(model, delta, local=None)
    GradientMatcher(unknown, render=lambda v: (v, y), fedavg="none")
    with pytest.raises(MissingCapabilityError, match="threat.local_hparams"):
        GradientMatcher(unknown, render=lambda v: (v, y), fedavg="strong")
    with pytest.raises(ConfigError, match="attack.fedavg"):
        GradientMatcher(obs, render=lambda v: (v, y), fedavg="medium")


@pytest.mark.parametrize(("hparams", "expected"), [("known", "client"), ("guessed", "guess"), ("unknown", None)])
def test_threat_model_grants_local_hyper_parameters(hparams, expected):
    cfg = resolve_config(["model=lenet-dlg", "dataset=synthetic", "image_size=16", "batch_size=4",
                          "protocol=fedavg", "protocol.local_epochs=2", "protocol.local_batch_size=2",
                          "protocol.lr=0.01", "protocol.momentum=0.5", f"threat.local_hparams={hparams}"])
    scenario = build_scenario(cfg)
    obs = scenario.observation
    assert obs.kind == "weight_delta"
    if expected == "client":
        assert obs.local_training == LocalTraining(epochs=2, batch_size=2, lr=0.01, momentum=0.5,
                                                   shuffle_seed=scenario.info["protocol"]["shuffle_seed"])
    elif expected == "guess":
        assert obs.local_training == GUESSED_LOCAL_TRAINING
    else:
        assert obs.local_training is None


def test_cli_attacks_a_fedavg_delta_with_strong_simulation(tmp_path, fast_cfg):
    out = tmp_path / "run"
    args = ["attack", "attack=inverting_gradients", "protocol=fedavg", "protocol.local_epochs=2",
            "protocol.local_batch_size=2", "protocol.lr=0.01", "model=lenet-dlg", "dataset=synthetic",
            "image_size=16", "batch_size=4", "attack.iterations=3", "attack.fedavg=strong", *fast_cfg,
            f"out={out}"]
    assert main(args) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["protocol"]["name"] == "fedavg" and config["protocol"]["local_epochs"] == 2
    assert isinstance(config["protocol"]["shuffle_seed"], int)  # the derived seed is recorded
    assert config["attack"]["fedavg"] == "strong"
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["threat"]["local_hparams"] == "known"
    # the observation file keeps the local training, so a re-attack can simulate it again
    again = tmp_path / "again"
    assert main(["attack", f"observation={out}", "attack.iterations=2", *fast_cfg, f"out={again}"]) == 0
