"""Romoa's sanitizing factors (§3.3, Eqs. 8–11) and sanitized aggregation (Algorithm 2).

* Generating functions (Eqs. 8–10): f = m − c, a participant's measurement minus the
  centroid of its parameter (``"signed"``, as printed), or the *cluster penalty*, a different
  generating function that the paper does not print (the ``"calibrated"`` preset's choice):
  f = 0 inside the majority cluster and −(|m − c| − h)⁺/h outside it (``"cluster_penalty"``),
  how far beyond the majority cluster's reach, in units of the mean-shift bandwidth h.
  (``"standardized"``,
  −max(0, |m − c| − κs)/s in units of the robust spread s = 1.4826·MAD, is an alternative.)
* Eq. 11, first line: the minimum of the three generating functions is the representative.
* Eq. 11, second line: F_t = β·softmax_i(F) + (1 − β)·F_{t−1}, the softmax taken over the
  participants separately for every parameter, so that Σᵢ F_tⁱ = 1 for every parameter.
* Algorithm 2, line 21: θ̄ = Σᵢ θⁱ ⊙ Fⁱ; with deltas, Σᵢ Fⁱ ⊙ Δᵢ.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

GENERATING = ("signed", "cluster_penalty", "standardized")
"""Eqs. 8–10 variants: the printed signed difference and two unprinted penalties."""


def generating_function(measure: Tensor, centroid: Tensor, mode: str = "signed", *,
                        scale: Optional[Tensor] = None, tolerance: float = 2.0,
                        member: Optional[Tensor] = None,
                        bandwidth: Optional[Tensor] = None) -> Tensor:
    """Eqs. 8–10 for a measurement m with centroid c (all arguments broadcast together).

    * ``"signed"`` (as printed): f = m − c.
    * ``"cluster_penalty"`` (not printed; the ``"calibrated"`` preset's choice): f = 0 for a
      participant whose measurement lies in the
      majority cluster (``member``), else −max(0, |m − c| − h)/h with h the mean-shift
      ``bandwidth``: how far beyond the cluster's reach, in bandwidths.
    * ``"standardized"``: f = −max(0, |m − c| − κ·s)/s, with s the robust spread ``scale``
      (floored at 1e-6·(1 + |c|)) and κ = ``tolerance``.
    """
    if mode == "signed":
        return measure - centroid
    if mode == "cluster_penalty":
        if member is None or bandwidth is None:
            raise ValueError("the cluster_penalty generating function needs member and bandwidth")
        beyond = torch.clamp((measure - centroid).abs() / bandwidth - 1.0, min=0.0)
        return torch.where(member, torch.zeros_like(beyond), -beyond)
    if mode != "standardized":
        raise ValueError(f"generating must be one of {GENERATING}, got {mode!r}")
    if scale is None:
        raise ValueError("the standardized generating function needs a scale")
    s = torch.maximum(scale, 1e-6 * (1 + centroid.abs()))
    return -torch.clamp((measure - centroid).abs() - tolerance * s, min=0) / s


def representative(f_element: Tensor, f_layer_cosine: Tensor, f_layer_pearson: Tensor) -> Tensor:
    """Eq. 11, first line: the minimum of the three generating functions (broadcasting)."""
    return torch.minimum(torch.minimum(f_element, f_layer_cosine), f_layer_pearson)


def sanitizing_factor(generating: Tensor, previous: Tensor, beta: float = 0.5) -> Tensor:
    """Eq. 11, second line: β·softmax over participants (dim 0) + (1 − β)·F_{t−1}."""
    return beta * torch.softmax(generating, dim=0) + (1 - beta) * previous


def initial_factor(n: int, d: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> Tensor:
    """F₀ⁱ = 1/n for every participant and parameter (Algorithm 2, line 3)."""
    return torch.full((n, d), 1.0 / n, dtype=dtype, device=device)


def sanitized_aggregation(updates: Tensor, factors: Tensor) -> Tensor:
    """Algorithm 2, line 21: Σᵢ Fⁱ ⊙ Δᵢ (the engine then sets θ̄ = θ_ref − this).

    Accumulated participant by participant (n fused multiply-adds of length d): no (n, d)
    temporary, which on a CPU beats ``(factors * updates).sum(0)`` (memory-bound).
    """
    if updates.shape != factors.shape or updates.dim() != 2 or updates.shape[0] == 0:
        raise ValueError(f"updates {tuple(updates.shape)} and factors "
                         f"{tuple(factors.shape)} must be the same non-empty (n, d)")
    out = factors[0] * updates[0]
    for f, u in zip(factors[1:], updates[1:]):
        out.addcmul_(f, u)
    return out


def jain_index(x: Tensor) -> float:
    """Jain's fairness index (Σx)² / (n·Σx²) ∈ [1/n, 1]; 1 when all shares are equal.

    NaN for an all-zero vector (nobody received anything: fairness is undefined).
    """
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    if x.numel() == 0:
        raise ValueError("Jain's index of an empty vector")
    den = x.numel() * (x * x).sum()
    return float((x.sum() ** 2 / den).item()) if den > 0 else float("nan")
