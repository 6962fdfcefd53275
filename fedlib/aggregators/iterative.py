"""Iterative rules: RFA's geometric median (smoothed Weiszfeld) and centered clipping.

Both return a linear combination of the rows; their per-client weight is Δᵢ's coefficient.
A fixed number of iterations, each one pass of exact distances to the current point and
one weighted sum (two O(n·d) passes, no (n, d) temporary). Both accept (n, d) or a batch
(B, n, d) (momentum (B, d)).
"""

from __future__ import annotations

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


def _geometric_median(x: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    n = x.shape[-2]
    w = torch.full(x.shape[:-1], 1.0 / n, dtype=x.dtype, device=x.device)
    z = weighted_sum(w, x)
    for _ in range(iters):
        beta = 1.0 / distances_to(x, z).clamp_min(eps)  # Weiszfeld weights, never 1/0
        w = beta / beta.sum(dim=-1, keepdim=True)
        z = weighted_sum(w, x)
    return z, w


def geometric_median_rule(iters: int = 10, eps: float = 1e-6) -> RuleCall:
    """:func:`geometric_median` with validated iters and eps."""
    iters = check_count(iters, "iters", "geometric_median")
    eps = check_positive(eps, "eps", "geometric_median")
    return RuleCall("geometric_median", _geometric_median, {"iters": iters, "eps": eps})


def geometric_median(updates: Tensor, iters: int = 10, eps: float = 1e-6) -> Tensor:
    """RFA's geometric median, argmin_z Σᵢ ‖z − Δᵢ‖, by the smoothed Weiszfeld algorithm.

    Pillutla, Kakade & Harchaoui, "Robust Aggregation for Federated Learning" (IEEE TSP
    2022), smoothed Weiszfeld: start at the mean, then ``iters`` times
    z ← Σᵢ βᵢΔᵢ / Σᵢ βᵢ with βᵢ = 1 / max(eps, ‖z − Δᵢ‖) (eps is the smoothing ν).
    10 iterations as in L2A (§6.1, App. E.1); Romoa's "RFA" baseline (§5); 0 = the mean.
    Rows with NaN/Inf are excluded (warning); all rows non-finite → ValueError.
    """
    return geometric_median_rule(iters, eps)(updates)[0]


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
