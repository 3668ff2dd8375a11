"""Exact Euclidean projections used by the generation-based attacks.

GIFD (Fang et al., ICCV 2023) keeps each feature stage's deviation from its start inside an ℓ1 ball and
projects after every optimiser step. The projection here is the exact sort-based algorithm of Duchi,
Shalev-Shwartz, Singer and Chandra, "Efficient Projections onto the ℓ1-Ball for Learning in High Dimensions"
(ICML 2008, Fig. 1), applied per sample: all dimensions but the first are flattened into one vector.

The norm-preserving sphere projection of latents lives with the priors (`fedinvert.priors.Prior.renormalize`),
because which dimensions keep their norm is a property of the prior's latent space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Radius = float | Sequence[float] | Tensor


def _radii(radius: Radius, rows: int, like: Tensor) -> Tensor:
    """Radius per row as a (rows,) tensor; scalars broadcast. Python numbers must be ≥ 0 (inf: no constraint)."""
    if not isinstance(radius, Tensor):
        values = [float(radius)] if isinstance(radius, (int, float)) else [float(r) for r in radius]
        if any(not r >= 0.0 for r in values):  # also rejects NaN
            raise ValueError(f"ℓ1 radii must be non-negative, got {values[:4]}")
        radius = torch.tensor(values, dtype=like.dtype, device=like.device)
    r = radius.to(dtype=like.dtype, device=like.device)
    if r.dim() == 0 or r.numel() == 1:
        return r.reshape(1).expand(rows)
    if r.numel() != rows:
        raise ValueError(f"got {r.numel()} radii for {rows} samples; give one radius or one per sample")
    # tensors are not checked on the host (no sync in the optimisation loop); negative radii act as 0
    return r.reshape(rows).clamp_min(0.0)


def project_l1_ball(x: Tensor, radius: Radius) -> Tensor:
    """Euclidean projection of each sample of ``x`` onto the ℓ1 ball ``{y : ‖y‖₁ ≤ radius}`` (Duchi et al. 2008).

    For a row v outside the ball the projection is ``sign(v)·max(|v| − θ, 0)`` with the threshold θ found
    from the sorted magnitudes: with u = |v| sorted in decreasing order and ρ the largest j such that
    ``u_j > (Σ_{i≤j} u_i − r)/j``, θ = ``(Σ_{i≤ρ} u_i − r)/ρ``. Rows already inside the ball are returned
    unchanged (bit for bit); radius 0 gives zeros. O(d log d) per row, no host synchronisation.

    Args:
        x: (N, ...) tensor; each of the N samples is flattened to one vector.
        radius: ℓ1 radius ≥ 0, either one value for all samples or one per sample ((N,) tensor or sequence).

    Returns:
        Tensor of the shape and dtype of ``x``, each sample with ℓ1 norm ≤ its radius (up to rounding).

    Raises:
        ValueError: ``x`` has no sample dimension, the number of radii does not match N, or a Python radius
            is negative or NaN.
    """
    if x.dim() < 1:
        raise ValueError("project_l1_ball needs a leading sample dimension")
    rows = x.shape[0]
    if rows == 0 or x[0].numel() == 0:
        return x.clone()
    flat = x.reshape(rows, -1)
    r = _radii(radius, rows, flat)
    magnitude = flat.abs()
    inside = magnitude.sum(dim=1) <= r
    # sums in float64: features of 65k entries would otherwise lose the threshold to rounding
    u = torch.sort(magnitude.double(), dim=1, descending=True).values
    excess = u.cumsum(dim=1) - r.double()[:, None]
    index = torch.arange(1, u.shape[1] + 1, device=u.device, dtype=u.dtype)
    active = u * index > excess
    rho = torch.where(active, index, torch.zeros_like(index)).amax(dim=1).clamp_min(1.0)
    theta = excess.gather(1, (rho.long() - 1)[:, None]) / rho[:, None]
    projected = torch.sign(flat) * (magnitude.double() - theta).clamp_min(0.0).to(flat.dtype)
    return torch.where(inside[:, None], flat, projected).reshape(x.shape)


def project_l1_ball_around(x: Tensor, center: Tensor, radius: Radius) -> Tensor:
    """Project each sample of ``x`` onto the ℓ1 ball of ``radius`` centred at the matching sample of ``center``.

    ``center + project_l1_ball(x − center, radius)``; GIFD's constraint of a stage's feature to a ball around
    the stage's start value. Samples already inside are returned unchanged; radius 0 returns ``center``.

    Args:
        x: (N, ...) tensor.
        center: tensor of the same shape as ``x``.
        radius: ℓ1 radius ≥ 0, one value or one per sample.

    Returns:
        Tensor of the shape of ``x``.
    """
    if center.shape != x.shape:
        raise ValueError(f"center has shape {tuple(center.shape)}, x has {tuple(x.shape)}")
    deviation = x - center
    projected = project_l1_ball(deviation, radius)
    rows = x.shape[0]
    inside = (deviation.reshape(rows, -1).abs().sum(dim=1) <= _radii(radius, rows, deviation)).reshape(
        rows, *([1] * (x.dim() - 1))
    )
    # points inside keep their exact value (center + (x − center) need not round back to x)
    return torch.where(inside, x, center + projected)
