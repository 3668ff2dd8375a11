"""The ℓ1-ball projection satisfies its definition: feasible, idempotent, identity inside, the nearest point."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import Bounds, LinearConstraint, minimize

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
@pytest.mark.filterwarnings("ignore:delta_grad == 0.0:UserWarning")  # trust-constr's quasi-Newton on a quadratic
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
        if not res.success:  # SLSQP stalls on some extreme rows (|x| = 50; "constraints incompatible")
            res = minimize(
                objective, start, method="trust-constr", bounds=Bounds(0, np.inf),
                constraints=[LinearConstraint(np.ones((1, 2 * d)), -np.inf, radius)],
                options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000},
            )
        theirs = res.x[:d] - res.x[d:]
        assert np.abs(ours).sum() <= radius * (1 + 1e-5) + 1e-6  # ours lies in the ball
        if res.success:  # a reference that did not converge (or left the ball) bounds nothing;
            # the optimality-condition test above certifies ours regardless
            # the solvers may violate the constraint by rounding, so compare with a relative tolerance
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


def reference_projection(x: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Duchi et al.'s algorithm row by row in NumPy float64: the reference the tensor version is checked against."""
    out = x.astype(np.float64).copy()
    for i, (row, r) in enumerate(zip(out, radius, strict=True)):
        if np.abs(row).sum() <= r:
            continue
        u = np.sort(np.abs(row))[::-1]
        excess = np.cumsum(u) - r
        j = np.arange(1, len(u) + 1)
        rho = j[u * j > excess].max() if (u * j > excess).any() else 1
        theta = excess[rho - 1] / rho
        out[i] = np.sign(row) * np.maximum(np.abs(row) - theta, 0.0)
    return out


@pytest.mark.parametrize("d", [7, 1000, 65536])
def test_float32_result_matches_a_float64_reference(d):
    # Prepare: rows of different scales, radii from far inside the norm to just below it, and one row inside.
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(5, d, generator=gen) * torch.tensor([1e-3, 1.0, 1.0, 30.0, 1.0])[:, None]
    norms = x.abs().sum(1)
    r = norms * torch.tensor([0.01, 0.3, 0.999, 0.5, 1.5])
    # Execute
    y = project_l1_ball(x, r)
    ref = reference_projection(x.double().numpy(), r.double().numpy())
    # Assert: float32 output, within float32 rounding of the float64 reference, on the ball's boundary.
    assert y.dtype == torch.float32 and y.device == x.device
    scale = x.abs().amax(1, keepdim=True).double().numpy()
    assert (np.abs(y.double().numpy() - ref) <= 4e-7 * scale).all(), np.abs(y.double().numpy() - ref).max()
    l1_y = l1(y.double())
    assert (l1_y[:4] - r[:4].double()).abs().max() <= 1e-5 * r[:4].double().max()
    assert torch.equal(y[4], x[4])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_dtype_and_device_follow_the_input(dtype):
    x = (torch.randn(3, 2, 5, 5) * 3).to(dtype)
    y = project_l1_ball(x, torch.tensor([1.0, 2.0, 1e6]))
    assert y.dtype == dtype and y.device == x.device and y.shape == x.shape
    assert (l1(y.double()) <= torch.tensor([1.0, 2.0, 1e6], dtype=torch.float64) * (1 + 1e-2)).all()
    assert torch.equal(y[2], x[2])  # inside: unchanged
    around = project_l1_ball_around(x, torch.zeros_like(x), 1.0)
    assert around.dtype == dtype and around.device == x.device


def test_float32_projection_allocates_no_float64_tensor():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Dtypes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[tuple[str, torch.dtype]] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.seen.add((func.overloadpacket.__name__, t.dtype))
            return out

    x = torch.randn(4, 64, 8, 8)
    with Dtypes() as mode:
        project_l1_ball_around(x, torch.zeros_like(x), torch.full((4,), 10.0))
        project_l1_ball(x, 10.0)
    assert {dtype for _, dtype in mode.seen} <= {torch.float32, torch.int64, torch.int32, torch.bool}, mode.seen
    assert not any(name in ("_local_scalar_dense", "lift_fresh") for name, _ in mode.seen)  # no host syncs or copies


@pytest.mark.parametrize("shift", [-100, -20, 0, 20, 100])
def test_scaling_by_a_power_of_two_scales_the_result_exactly(shift):
    # the fixed-point sum is per row and relative to the row's largest entry, so powers of two commute with it
    x = torch.randn(3, 500, generator=torch.Generator().manual_seed(1)) * 5
    r = torch.tensor([1.0, 40.0, 300.0])
    factor = 2.0**shift
    assert torch.equal(project_l1_ball(x * factor, r * factor), project_l1_ball(x, r) * factor)


def test_each_row_is_projected_independently_of_the_batch():
    x = torch.randn(6, 300) * torch.logspace(-3, 3, 6)[:, None]
    r = x.abs().sum(1) * 0.2
    batch = project_l1_ball(x, r)
    for i in range(6):
        assert torch.equal(project_l1_ball(x[i : i + 1], r[i : i + 1]), batch[i : i + 1])


def test_rows_with_a_non_finite_norm_outside_the_ball_become_nan():
    x = torch.tensor([[1.0, float("inf")], [1.0, float("nan")], [3.0, -4.0]])
    y = project_l1_ball(x, 1.0)
    assert torch.isnan(y[0]).all() and torch.isnan(y[1]).all()
    torch.testing.assert_close(y[2], torch.tensor([0.0, -1.0]))
