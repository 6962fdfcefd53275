"""Iterative rules: RFA's geometric median (smoothed Weiszfeld) and centered clipping.

Both return a linear combination of the rows; their per-client weight is Δᵢ's coefficient.
Each iteration is one pass of exact distances to the current point and one weighted sum
(two O(n·d) passes, no (n, d) temporary). Both accept (n, d) or a batch (B, n, d)
(momentum (B, d)).
"""

from __future__ import annotations

import numbers
from typing import Union

import torch
from torch import Tensor

from ._checks import RuleCall, check_count, check_positive, check_vector, row_norms, weighted_sum

Radius = Union[float, str]
"""Centered clipping's radius τ: a number (absolute, in the units of ‖Δᵢ‖) or ``"median_norm"``."""

RADIUS_RULES = ("median_norm",)


def distances_to(x: Tensor, z: Tensor) -> Tensor:
    """(..., n) exact ‖xᵢ − z‖₂ (``torch.cdist`` without the Gram shortcut); overflow gives +inf.

    Distances small enough for their squares to underflow (< √(tiny/eps), ≈ 3e-16 in
    float32) are recomputed by :func:`row_norms`, so they are 0 only where xᵢ = z.
    """
    dist = torch.cdist(x, z.unsqueeze(-2),
                       compute_mode="donot_use_mm_for_euclid_dist").squeeze(-1)
    info = torch.finfo(x.dtype)
    small = dist < (info.tiny / info.eps) ** 0.5
    if bool(small.any()):
        dist[small] = row_norms(x[small] - z.unsqueeze(-2).expand_as(x)[small])
    return dist


DISTANCE_BLOCK = 1 << 21
"""Elements (rows × coordinates, all replicas) per block of :func:`blockwise_distances_to`:
a block stays in cache, and a call makes a few large operations rather than many small ones."""


def blockwise_distances_to(x: Tensor, z: Tensor, buf: Tensor | None = None) -> Tensor:
    """(..., n) exact ‖xᵢ − z‖₂ (no Gram shortcut), block by block of columns.

    Each block's differences (``DISTANCE_BLOCK`` elements) go into one reused buffer ``buf``
    (from :func:`distance_buffer`) and their norms are added up as squares in float64, so x
    is read from memory once and no (n, d) temporary is written; rounding ≈ 10⁻⁷ relative in
    float32 (``torch.cdist``'s exact mode, one float32 accumulator per row: up to ≈ 10⁻⁵ at
    d = 10⁵). A distance beyond the dtype's range is +inf; distances small enough for their
    squares to underflow are recomputed by :func:`row_norms`, so they are 0 only where xᵢ = z.
    Where autograd records (x or z requires grad) the differences are one (n, d) temporary.
    """
    if torch.is_grad_enabled() and (x.requires_grad or z.requires_grad):
        dist = torch.linalg.vector_norm(x - z.unsqueeze(-2), dim=-1)
    else:
        d = x.shape[-1]
        buf = distance_buffer(x) if buf is None else buf
        width = buf.shape[-1]
        sq = torch.zeros(x.shape[:-1], dtype=torch.float64, device=x.device)
        for start in range(0, d, width):
            b = buf[..., :min(width, d - start)]
            torch.sub(x[..., start:start + width], z[..., start:start + width].unsqueeze(-2),
                      out=b)
            sq.add_(torch.linalg.vector_norm(b, dim=-1).double().square_())
        dist = sq.sqrt_().to(x.dtype)
    info = torch.finfo(x.dtype)
    small = dist < (info.tiny / info.eps) ** 0.5
    if bool(small.any()):
        dist[small] = row_norms(x[small] - z.unsqueeze(-2).expand_as(x)[small])
    return dist


def distance_buffer(x: Tensor) -> Tensor:
    """An empty (..., n, w) buffer for :func:`blockwise_distances_to` on x (..., n, d)."""
    width = min(x.shape[-1], max(1, DISTANCE_BLOCK // x.shape[:-1].numel()))
    return torch.empty(*x.shape[:-1], width, dtype=x.dtype, device=x.device)


def weiszfeld_converged(z_new: Tensor, z: Tensor, tol: float) -> Tensor:
    """(...,) whether a smoothed Weiszfeld step moved z by at most ``tol``·‖z‖∞ in ‖·‖∞
    (``tol`` = 0: not at all, a fixed point, so every further step would return z again)."""
    if tol == 0:
        return (z_new == z).all(dim=-1)
    return (z_new - z).abs().amax(dim=-1) <= tol * z.abs().amax(dim=-1)


def _geometric_median(x: Tensor, iters: int, eps: float, tol: float) -> tuple[Tensor, Tensor]:
    n = x.shape[-2]
    w = torch.full(x.shape[:-1], 1.0 / n, dtype=x.dtype, device=x.device)
    z = weighted_sum(w, x)
    buf = distance_buffer(x)
    active = torch.ones(x.shape[:-2], dtype=torch.bool, device=x.device)
    for _ in range(iters):
        beta = 1.0 / blockwise_distances_to(x, z, buf).clamp_min(eps)  # never 1/0
        w_new = beta / beta.sum(dim=-1, keepdim=True)
        z_new = weighted_sum(w_new, x)
        if x.dim() == 2:
            w, z, done = w_new, z_new, bool(weiszfeld_converged(z_new, z, tol))
        else:  # a converged replica keeps its point, as it would alone
            step = active & ~weiszfeld_converged(z_new, z, tol)
            if bool(active.all()):
                w, z = w_new, z_new
            else:
                w = torch.where(active.unsqueeze(-1), w_new, w)
                z = torch.where(active.unsqueeze(-1), z_new, z)
            active = step
            done = not bool(active.any())
        if done:
            break
    return z, w


def geometric_median_rule(iters: int = 10, eps: float = 1e-6, tol: float = 0.0) -> RuleCall:
    """:func:`geometric_median` with validated iters, eps and tol."""
    iters = check_count(iters, "iters", "geometric_median")
    eps = check_positive(eps, "eps", "geometric_median")
    tol = check_tolerance(tol, "tol", "geometric_median")
    return RuleCall("geometric_median", _geometric_median,
                    {"iters": iters, "eps": eps, "tol": tol})


def check_tolerance(value: object, what: str, rule: str) -> float:
    """A finite real tolerance ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 \
            or value == float("inf"):
        raise ValueError(f"{rule}: {what} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def geometric_median(updates: Tensor, iters: int = 10, eps: float = 1e-6,
                     tol: float = 0.0) -> Tensor:
    """RFA's geometric median, argmin_z Σᵢ ‖z − Δᵢ‖, by the smoothed Weiszfeld algorithm.

    Pillutla, Kakade & Harchaoui, "Robust Aggregation for Federated Learning" (IEEE TSP
    2022), smoothed Weiszfeld: start at the mean, then up to ``iters`` times
    z ← Σᵢ βᵢΔᵢ / Σᵢ βᵢ with βᵢ = 1 / max(eps, ‖z − Δᵢ‖) (eps is the smoothing ν).
    10 iterations as in L2A (§6.1, App. E.1); Romoa's "RFA" baseline (§5); 0 = the mean.
    Early stop: after a step that moved z by at most ``tol``·‖z‖∞ (max-norm). The default
    tol = 0 stops only at a fixed point (a step that leaves z unchanged, after which every
    step would), so the result is that of all ``iters`` steps; tol > 0 trades accuracy for
    fewer steps (a replica of a batch stops on its own). Distances:
    :func:`blockwise_distances_to`. Rows with NaN/Inf are excluded (warning); all rows
    non-finite → ValueError.
    """
    return geometric_median_rule(iters, eps, tol)(updates)[0]


def median_norm(x: Tensor) -> Tensor:
    """(...,) the median of the row norms ‖Δᵢ‖ (mean of the two middle ones for even n)."""
    s = torch.sort(row_norms(x), dim=-1).values
    n = s.shape[-1]
    mid = (n - 1) // 2
    return s[..., mid] if n % 2 else s[..., mid] * 0.5 + s[..., mid + 1] * 0.5


def _centered_clipping(x: Tensor, radius: Radius, iters: int,
                       momentum: Tensor | None = None) -> tuple[Tensor, Tensor]:
    n = x.shape[-2]
    v = torch.zeros(*x.shape[:-2], x.shape[-1], dtype=x.dtype, device=x.device) \
        if momentum is None else check_vector(momentum, x, "momentum", "centered_clipping")
    r = median_norm(x).unsqueeze(-1) if radius == "median_norm" else radius
    w = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        c = (r / distances_to(x, v)).clamp(max=1.0) / n  # distance 0 → inf → 1
        c = torch.nan_to_num(c, nan=1.0 / n)  # τ = 0 (all-zero rows) at distance 0
        keep = 1.0 - c.sum(dim=-1, keepdim=True)
        v = keep * v + weighted_sum(c, x)
        w = keep * w + c
    return v, w


def check_radius(radius: object) -> Radius:
    """The clipping radius τ > 0 finite, or one of :data:`RADIUS_RULES`."""
    if isinstance(radius, str):
        if radius not in RADIUS_RULES:
            raise ValueError(f"centered_clipping: radius must be a number > 0 or one of "
                             f"{RADIUS_RULES}, got {radius!r}")
        return radius
    return check_positive(radius, "radius", "centered_clipping")


def centered_clipping_rule(radius: Radius = "median_norm", iters: int = 1) -> RuleCall:
    """:func:`centered_clipping` with validated radius and iters; pass ``momentum=v₀`` per call."""
    radius = check_radius(radius)
    iters = check_count(iters, "iters", "centered_clipping", minimum=1)
    return RuleCall("centered_clipping", _centered_clipping, {"radius": radius, "iters": iters})


def centered_clipping(updates: Tensor, radius: Radius = "median_norm", iters: int = 1,
                      momentum: Tensor | None = None) -> Tensor:
    """Centered clipping (Karimireddy, He & Jaggi, ICML 2021, §4, Eq. CC).

    Starting from v₀ = ``momentum`` (the previous round's aggregate, the paper's server
    momentum; zeros if None), ``iters`` times
    v ← v + (1/n) Σᵢ (Δᵢ − v)·min(1, τ/‖Δᵢ − v‖).
    The paper finds iters = 1 enough when v₀ is the previous aggregate. ``radius`` (the
    paper's clipping radius τ) is in the units of ‖Δᵢ‖: a number is used as is;
    ``"median_norm"`` (default) takes τ = the median of the call's ‖Δᵢ‖ (over the finite
    rows), so the radius follows the uploads' scale
    (lr·gradient ≈ 1e-2 in practice, where a fixed τ = 10 never clips and the rule is the
    mean). The result is a·v₀ + Σᵢ wᵢΔᵢ with Σwᵢ = 1 − a; the registry object
    (``get("centered_clipping")``) carries v across rounds and reports w as its weights.
    Translation-equivariant for a numeric τ when v₀ moves too. Rows with NaN/Inf are
    excluded (warning); a non-finite or wrongly shaped ``momentum`` raises ValueError.
    A batch (B, n, d) takes momentum (B, d) and τ per replica.
    """
    return centered_clipping_rule(radius, iters)(updates, batch_params=(
        {} if momentum is None else {"momentum": momentum}))[0]
