"""Iterative rules: RFA's geometric median (smoothed Weiszfeld) and centered clipping.

Both return a linear combination of the rows; their per-client weight is Δᵢ's coefficient.
A fixed number of iterations, each one pass of exact distances to the current point and
one weighted sum (two O(n·d) passes, no (n, d) temporary).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import RuleCall, check_count, check_positive, check_vector


def distances_to(x: Tensor, z: Tensor) -> Tensor:
    """(n,) exact ‖xᵢ − z‖₂ (``torch.cdist`` without the Gram shortcut); overflow gives +inf."""
    return torch.cdist(x, z[None], compute_mode="donot_use_mm_for_euclid_dist").squeeze(1)


def _geometric_median(x: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    z = w @ x
    for _ in range(iters):
        beta = 1.0 / distances_to(x, z).clamp_min(eps)
        w = beta / beta.sum()
        z = w @ x
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


def _centered_clipping(x: Tensor, tau: float, iters: int,
                       momentum: Tensor | None) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    v = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device) if momentum is None \
        else check_vector(momentum, x, "momentum", "centered_clipping")
    w = torch.zeros(n, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        c = (tau / distances_to(x, v)).clamp(max=1.0) / n  # distance 0 → inf → 1
        keep = 1.0 - c.sum()
        v = keep * v + c @ x
        w = keep * w + c
    return v, w


def centered_clipping_rule(tau: float = 10.0, iters: int = 1) -> RuleCall:
    """:func:`centered_clipping` with validated tau and iters; pass ``momentum=v₀`` per call."""
    tau = check_positive(tau, "tau", "centered_clipping")
    iters = check_count(iters, "iters", "centered_clipping", minimum=1)
    return RuleCall("centered_clipping", _centered_clipping, {"tau": tau, "iters": iters})


def centered_clipping(updates: Tensor, radius: float = 10.0, iters: int = 1,
                      momentum: Tensor | None = None) -> Tensor:
    """Centered clipping (Karimireddy, He & Jaggi, ICML 2021, §4, Eq. CC).

    Starting from v₀ = ``momentum`` (the previous round's aggregate, the paper's server
    momentum; zeros if None), ``iters`` times
    v ← v + (1/n) Σᵢ (Δᵢ − v)·min(1, τ/‖Δᵢ − v‖).
    The paper finds iters = 1 enough when v₀ is the previous aggregate; τ is in the units
    of ‖Δᵢ‖. The result is a·v₀ + Σᵢ wᵢΔᵢ with Σwᵢ = 1 − a; the registry object
    (``get("centered_clipping")``) carries v across rounds and reports w as its weights.
    Translation-equivariant when v₀ moves too. Rows with NaN/Inf are excluded (warning);
    a non-finite or wrongly shaped ``momentum`` raises ValueError.
    """
    return centered_clipping_rule(radius, iters)(updates, momentum=momentum)[0]

