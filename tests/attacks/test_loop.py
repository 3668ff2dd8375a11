"""The shared optimisation loop: best-iterate tracking per restart and Ctrl-C returning the best so far."""

import math

import torch

from fedinvert.attacks.base import Adam, optimize, ramp_schedule, step_schedule


def _quadratic_step(target):
    """Per-restart loss ‖x − target‖², its gradient and the same value as the 'distance'."""

    def step(variables):
        (x,) = variables
        diff = x - target
        loss = (diff**2).flatten(1).sum(1)
        return (2 * diff,), loss, loss

    return step


def test_each_restart_keeps_its_own_least_distance_iterate():
    target = torch.zeros(3, 4)
    x0 = torch.stack([torch.full((4,), 1.0), torch.full((4,), -2.0), torch.full((4,), 5.0)])
    result = optimize(_quadratic_step(target), [x0], iterations=50, lr=0.1, log_every=10)
    assert result.steps == 50 and not result.interrupted
    final = (result.best[0] ** 2).sum(1)
    assert torch.allclose(final, result.best_distance)
    assert (result.best_distance < (x0**2).sum(1)).all()
    assert len(result.history) == 5


def test_ctrl_c_returns_the_best_so_far():
    target = torch.zeros(1, 2)
    inner = _quadratic_step(target)
    calls = {"n": 0}

    def step(variables):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return inner(variables)

    result = optimize(step, [torch.ones(1, 2)], iterations=100, lr=0.1)
    assert result.interrupted and result.steps == 7
    assert float(result.best_distance[0]) < 2.0  # better than the start (distance 2)


def test_schedules_match_their_definitions():
    assert ramp_schedule(0.0) == 0.0
    assert abs(ramp_schedule(0.025) - 0.5) < 1e-9  # halfway through the 5 % warm-up
    assert ramp_schedule(0.2) == 1.0  # plateau
    assert abs(ramp_schedule(0.625) - 0.5) < 1e-9  # halfway through the cosine decay
    assert [step_schedule(t) for t in (0.0, 0.4, 0.7, 0.9)] == [1.0, 0.1, 0.1**2, 0.1**3]


def test_the_loops_adam_gives_torch_optim_adams_numbers_step_for_step():
    # Prepare: two tensors with their own learning rates, gradients that change sign and scale, a schedule
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 16, generator=gen)]
    ours = [t.clone() for t in start]
    theirs = [t.clone().requires_grad_(True) for t in start]
    reference = torch.optim.Adam([{"params": [t], "lr": r} for t, r in zip(theirs, (0.1, 0.03), strict=True)])
    base_rates = [g["lr"] for g in reference.param_groups]
    adam = Adam(ours, (0.1, 0.03))
    for it in range(200):
        grads = [torch.randn(t.shape, generator=gen) * 10 ** (it % 5 - 2) for t in start]
        factor = 0.5 * (1 + math.cos(math.pi * it / 200))
        # Execute
        adam.step(grads, factor)
        for group, base in zip(reference.param_groups, base_rates, strict=True):
            group["lr"] = base * factor
        for t, g in zip(theirs, grads, strict=True):
            t.grad = g.clone()
        reference.step()
    # Assert: the same bits, not just close
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b.detach())


def test_best_and_last_iterates_are_the_evaluated_ones_not_their_updates():
    seen = []

    def step(variables):
        (x,) = variables
        seen.append(x.detach().clone())
        loss = (x**2).flatten(1).sum(1)
        return (2 * x,), loss, loss

    result = optimize(step, [torch.full((1, 4), 3.0)], iterations=5, lr=0.5)

    assert torch.equal(result.last[0], seen[-1])  # the iterate the last distance was computed on
    assert result.last_distance.item() == (seen[-1] ** 2).sum().item()
    assert torch.equal(result.best[0], min(seen, key=lambda x: float((x**2).sum())))
