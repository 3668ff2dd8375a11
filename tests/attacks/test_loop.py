"""The shared optimisation loop: best-iterate tracking per restart and Ctrl-C returning the best so far."""

import torch

from fedinvert.attacks.base import optimize, ramp_schedule, step_schedule


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
