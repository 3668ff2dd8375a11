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
    """Radius per row as a (rows,) tensor on ``like``'s device and dtype; scalars broadcast.

    Python numbers must be ≥ 0 (inf: no constraint). A Python scalar becomes a fill on the device (no host to
    device copy); a Python sequence is copied once per call, so loops should pass a tensor.
    """
    if not isinstance(radius, Tensor):
        values = [float(radius)] if isinstance(radius, (int, float)) else [float(r) for r in radius]
        if any(not r >= 0.0 for r in values):  # also rejects NaN
            raise ValueError(f"ℓ1 radii must be non-negative, got {values[:4]}")
        if len(values) == 1:
            return torch.full((rows,), values[0], dtype=like.dtype, device=like.device)
        radius = torch.tensor(values, dtype=like.dtype, device=like.device)
    r = radius.to(dtype=like.dtype, device=like.device)
    if r.dim() == 0 or r.numel() == 1:
        r = r.reshape(1).expand(rows)
    elif r.numel() != rows:
        raise ValueError(f"got {r.numel()} radii for {rows} samples; give one radius or one per sample")
    # tensors are not checked on the host (no sync in the optimisation loop); negative and NaN radii act as 0
    return r.reshape(rows).nan_to_num(nan=0.0).clamp_min(0.0)


#: exponent and mantissa bits of the floating types the projection computes in
_FLOAT_BITS = {torch.float32: (torch.int32, 8, 23), torch.float64: (torch.int64, 11, 52)}


def _power_of_two(k: Tensor, dtype: torch.dtype) -> Tensor:
    """Exactly 2**k (k an integer tensor inside the normal exponent range of ``dtype``), from its bit pattern.

    ``torch.ldexp`` and ``exp2`` go through ``pow``, which is not guaranteed exact on every device.
    """
    int_type, exponent_bits, mantissa_bits = _FLOAT_BITS[dtype]
    bias = 2 ** (exponent_bits - 1) - 1
    return ((k.to(int_type) + bias) << mantissa_bits).view(dtype)


def _scale_by_power_of_two(x: Tensor, k: Tensor) -> Tensor:
    """``x · 2**k`` exactly (up to underflow), k an integer tensor that broadcasts against ``x``; applied as two
    factors of about √(2**k) so that neither factor nor the intermediate leaves the normal range."""
    half = torch.div(k, 2, rounding_mode="floor")
    return x * _power_of_two(half, x.dtype) * _power_of_two(k - half, x.dtype)


def project_l1_ball(x: Tensor, radius: Radius) -> Tensor:
    """Euclidean projection of each sample of ``x`` onto the ℓ1 ball ``{y : ‖y‖₁ ≤ radius}`` (Duchi et al. 2008).

    For a row v outside the ball the projection is ``sign(v)·max(|v| − θ, 0)`` with the threshold θ found
    from the sorted magnitudes: with u = |v| sorted in decreasing order and ρ the largest j such that
    ``u_j > (Σ_{i≤j} u_i − r)/j``, θ = ``(Σ_{i≤ρ} u_i − r)/ρ``. Rows already inside the ball are returned
    unchanged (bit for bit); radius 0 gives zeros. O(d log d) per row, no host synchronisation.

    Precision and determinism: the result is computed in the dtype of ``x`` (float32 for float32, float16 and
    bfloat16 inputs, which are cast back; float64 for float64) on its device. Only the running sum that finds
    the threshold needs more than that: accumulated in float32 over a 65k-entry feature it is off by enough
    to move θ, which comes from the difference Σ − r, by 1 % where the radius is close to the norm (measured
    at d = 65,536, r = 0.999·‖v‖₁), and a floating-point ``cumsum`` on CUDA is not
    deterministic (its parallel scan may add in a different order on every call, and PyTorch's deterministic
    mode refuses it). It is done in 64-bit fixed point instead — each row's magnitudes scaled
    by a power of two so that the row's sum stays below 2**62, then truncated to int64 — where the running
    sum and the test ``u_j·j > Σ_{i≤j} u_i − r`` are exact integer arithmetic, hence identical on every
    device and every call, and the one cancellation (Σ − r) loses nothing. The truncation costs at most
    2**-(62 − ⌈log2 d⌉) of a row's largest magnitude per entry (2**-46 for d = 65,536), comparable
    to float64's own rounding of such a sum. No float64 tensor is allocated for float32 inputs.

    Args:
        x: (N, ...) tensor; each of the N samples is flattened to one vector.
        radius: ℓ1 radius ≥ 0, either one value for all samples or one per sample ((N,) tensor or sequence).
            Inside loops pass a tensor on ``x``'s device (a Python sequence is copied to it on every call).

    Returns:
        Tensor of the shape, dtype and device of ``x``, each sample with ℓ1 norm ≤ its radius (up to
        rounding); samples whose ℓ1 norm is not finite and that lie outside their ball come back as NaN.

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
    work = flat if flat.dtype in _FLOAT_BITS else flat.float()
    d = work.shape[1]
    r = _radii(radius, rows, work)
    magnitude = work.abs()
    norm = magnitude.sum(dim=1)
    inside = norm <= r
    u = torch.sort(magnitude, dim=1, descending=True).values
    # fixed point: u·2**k with max(u) < 2**e (frexp) and k = bits − e, so that every entry is < 2**bits and a
    # row's sum, and u_j·j for j ≤ d, stay below 2**62
    bits = 62 - (d - 1).bit_length()
    k = bits - torch.frexp(u[:, 0]).exponent.to(torch.int64)
    units = _scale_by_power_of_two(u, k[:, None]).to(torch.int64)
    # radii beyond the row's norm belong to rows inside the ball, whose result is discarded: clamp so they fit
    r_units = _scale_by_power_of_two(r, k).clamp(max=2.0**62).to(torch.int64)
    excess = units.cumsum(dim=1) - r_units[:, None]  # Σ_{i≤j} u_i − r, exact
    index = torch.arange(1, d + 1, device=work.device, dtype=torch.int64)
    active = units * index > excess
    rho = torch.where(active, index, torch.zeros_like(index)).amax(dim=1).clamp_min(1)
    theta_units = excess.gather(1, (rho - 1)[:, None]).squeeze(1)
    theta = _scale_by_power_of_two(theta_units.to(work.dtype) / rho.to(work.dtype), -k).clamp_min(0.0)
    theta = torch.where(torch.isfinite(norm), theta, torch.full_like(theta, float("nan")))
    projected = (torch.sign(work) * (magnitude - theta[:, None]).clamp_min(0.0)).to(flat.dtype)
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
