"""The ℓ1-ball projection satisfies its definition: feasible, idempotent, identity inside, the nearest point."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from fedinvert.attacks.projections import project_l1_ball, project_l1_ball_around

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def batches(draw, max_dim=12):
    """(N, d) float64 tensors with radii per row, a mix of points inside and outside their balls."""
    n = draw(st.integers(1, 4))
    d = draw(st.integers(1, max_dim))
    x = draw(arrays(np.float64, (n, d), elements=finite))
    radii = draw(arrays(np.float64, (n,), elements=st.floats(0, 100, allow_nan=False)))
    return torch.from_numpy(x), torch.from_numpy(radii)


def l1(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).abs().sum(1)


@settings(max_examples=200, deadline=None)
@given(batches())
def test_result_lies_in_the_ball(case):
    x, r = case
    y = project_l1_ball(x, r)
    assert y.shape == x.shape
    assert (l1(y) <= r * (1 + 1e-5) + 1e-9).all()


@settings(max_examples=200, deadline=None)
@given(batches())
def test_points_inside_are_unchanged_and_projecting_twice_changes_nothing(case):
    x, r = case
    y = project_l1_ball(x, r)
    inside = l1(x) <= r
    assert torch.equal(y[inside], x[inside])
    torch.testing.assert_close(project_l1_ball(y, r), y, rtol=1e-9, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(batches())
def test_result_is_the_nearest_point_of_the_ball(case):
    # y is the projection iff ⟨x − y, z − y⟩ ≤ 0 for every z in the ball; by convexity it suffices to check
    # the vertices ±r·e_i, whose maximum of ⟨x − y, z⟩ is r·‖x − y‖_∞.
    x, r = case
    y = project_l1_ball(x, r)
    residual = x - y
    worst = r * residual.abs().amax(dim=1) - (residual * y).sum(dim=1)
    scale = 1 + x.abs().sum(1) * (1 + r)
    assert (worst <= 1e-9 * scale).all(), worst


@settings(max_examples=40, deadline=None)
@given(batches(max_dim=5))
def test_agrees_with_a_brute_force_solver(case):
    # SLSQP on min ‖p − n − x‖² s.t. p, n ≥ 0, Σ(p + n) ≤ r: a smooth form of the same problem.
    x, r = case
    y = project_l1_ball(x, r).numpy()
    for row, radius, ours in zip(x.numpy(), r.numpy(), y, strict=True):
        d = len(row)

        def objective(v, row=row, d=d):
            return float(np.sum((v[:d] - v[d:] - row) ** 2))

        start = np.concatenate([row.clip(min=0), (-row).clip(min=0)])
        start *= min(1.0, radius / max(start.sum(), 1e-12))
        res = minimize(
            objective, start, method="SLSQP", bounds=[(0, None)] * (2 * d),
            constraints=[{"type": "ineq", "fun": lambda v, radius=radius: radius - v.sum()}],
            options={"ftol": 1e-14, "maxiter": 500},
        )
        theirs = res.x[:d] - res.x[d:]
        # SLSQP may violate the constraint by rounding, so compare with a relative tolerance
        assert objective(np.concatenate([ours.clip(min=0), (-ours).clip(min=0)])) <= res.fun + 1e-6 * (1 + res.fun)
        np.testing.assert_allclose(ours, theirs, atol=1e-3 * (1 + np.abs(row).max()))


def test_no_random_point_of_the_ball_is_closer():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, generator=gen) * 4
    r = torch.tensor([0.5, 2.0, 7.0])
    y = project_l1_ball(x, r)
    # random points inside each ball and on its boundary
    z = torch.randn(2000, 3, 6, generator=gen)
    z = z / z.abs().sum(-1, keepdim=True) * r[None, :, None]  # on the boundary
    z[1000:] *= torch.rand(1000, 3, 1, generator=gen)  # inside
    assert ((z - x).square().sum(-1) >= (y - x).square().sum(-1) - 1e-6).all()


def test_radius_zero_gives_the_center_and_shapes_are_kept():
    x = torch.randn(2, 3, 4, 4)
    center = torch.randn(2, 3, 4, 4)
    assert torch.equal(project_l1_ball(x, 0.0), torch.zeros_like(x))
    torch.testing.assert_close(project_l1_ball_around(x, center, 0.0), center)
    y = project_l1_ball_around(x, center, torch.tensor([1.0, 3.0]))
    assert y.shape == x.shape
    assert (l1(y - center) <= torch.tensor([1.0, 3.0]) * (1 + 1e-5)).all()


def test_around_keeps_points_inside_exactly():
    x = torch.randn(4, 10)
    center = x + 1e-3 * torch.randn(4, 10)
    assert torch.equal(project_l1_ball_around(x, center, 1.0), x)


def test_float32_features_of_gifd_size():
    # a 64×32×32 feature (65,536 entries) with a radius far below its norm, as in GIFD's last stage
    x = torch.randn(2, 64, 32, 32)
    y = project_l1_ball(x, 100.0)
    assert y.dtype == torch.float32
    assert (l1(y) <= 100.0 * (1 + 1e-5)).all() and (l1(y) >= 100.0 * (1 - 1e-4)).all()


def test_bad_radii_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        project_l1_ball(torch.ones(2, 3), -1.0)
    with pytest.raises(ValueError, match="radii"):
        project_l1_ball(torch.ones(2, 3), [1.0, 2.0, 3.0])
