"""Linear rules: FedAvg's (weighted) mean and FLTrust's trust-weighted sum.

Their per-client weight is the coefficient of Δᵢ in the output, out = Σᵢ wᵢΔᵢ. Every rule
accepts (n, d) or a batch (..., n, d) (per-replica weights (..., n), Δ₀ (..., d)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import RuleCall, check_updates, check_vector, row_norms, weighted_sum


def _mean(x: Tensor) -> tuple[Tensor, Tensor]:
    n = x.shape[-2]
    w = torch.full(x.shape[:-1], 1.0 / n, dtype=x.dtype, device=x.device)
    return weighted_sum(w, x), w  # Σ (Δᵢ/n): partial sums never exceed max|Δᵢⱼ|, no overflow


def _weighted_mean(x: Tensor, client_weights: Tensor) -> tuple[Tensor, Tensor]:
    total = client_weights.sum(dim=-1, keepdim=True)
    empty = ~(total > 0)
    if bool(empty.any()):
        where = "" if x.dim() == 2 else \
            f" in replica {int(empty.reshape(-1).nonzero()[0])} of this batch"
        raise ValueError(f"weighted_mean: the weights of the finite updates sum to 0{where}")
    w = client_weights / total
    return weighted_sum(w, x), w


def check_client_weights(weights: Tensor | Sequence[float], n: int, like: Tensor,
                         rule: str = "weighted_mean") -> Tensor:
    """(..., n) finite, non-negative weights on the updates' device and dtype.

    (n,) weights are shared by every replica of a batch ``like`` (..., n, d).
    """
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    want = tuple(like.shape[:-1])
    if w.dim() == 1 and w.shape[0] == n and like.dim() > 2:
        w = w.expand(want)
    if tuple(w.shape) != want:
        raise ValueError(f"{rule}: expected {n} weights (one per update) of shape {want}, "
                         f"got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{rule}: weights must be finite and ≥ 0")
    return w


def mean_rule() -> RuleCall:
    """:func:`mean` as a :class:`RuleCall` (returns weights too)."""
    return RuleCall("mean", _mean)


def weighted_mean_rule() -> RuleCall:
    """:func:`weighted_mean` as a :class:`RuleCall`; pass ``row_params={"client_weights": w}``."""
    return RuleCall("weighted_mean", _weighted_mean)


def fltrust_rule() -> RuleCall:
    """:func:`fltrust` as a :class:`RuleCall`; pass ``batch_params={"server_update": Δ₀}``."""
    return RuleCall("fltrust", _fltrust)


def mean(updates: Tensor) -> Tensor:
    """FedAvg's average (McMahan et al., AISTATS 2017, Alg. 1 with equal n_k): (1/n) Σᵢ Δᵢ.

    Not robust: one large finite row moves it arbitrarily. Rows with NaN/Inf are excluded
    (warning); all rows non-finite → ValueError. (..., n, d) → (..., d).
    """
    return mean_rule()(updates)[0]


def weighted_mean(updates: Tensor, weights: Tensor | Sequence[float]) -> Tensor:
    """FedAvg's weighted average (McMahan et al. 2017, Alg. 1): Σᵢ pᵢΔᵢ / Σᵢ pᵢ, pᵢ ≥ 0.

    ``weights`` (n,) or (..., n) are e.g. the clients' sample counts n_k. Rows with NaN/Inf
    are excluded (warning) and the remaining weights renormalised; ValueError if those sum
    to 0 or the weights are negative, non-finite or of the wrong shape.
    """
    x = check_updates(updates, "weighted_mean")
    w = check_client_weights(weights, x.shape[-2], x)
    return weighted_mean_rule()(x, row_params={"client_weights": w})[0]


def fltrust_weights(x: Tensor, server_update: Tensor) -> Tensor:
    """(..., n) FLTrust coefficients wᵢ = TSᵢ/Σⱼ TSⱼ · ‖Δ₀‖/‖Δᵢ‖, TSᵢ = ReLU(cos(Δᵢ, Δ₀)).

    Norms are underflow- and overflow-safe (:func:`row_norms`). A zero row (‖Δᵢ‖ = 0) has no
    direction: TS = 0 and weight 0, never 0·∞. All-zero trust, or Δ₀ = 0, gives all-zero
    weights.
    """
    g0 = server_update
    g0_norm = row_norms(g0.unsqueeze(-2)).squeeze(-1)  # (...,): ‖Δ₀‖ per replica
    if not bool((g0_norm > 0).any()):
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    norms = row_norms(x)
    dots = x @ g0 if x.dim() == 2 else (x @ g0.unsqueeze(-1)).squeeze(-1)
    cos = dots / (norms * g0_norm.unsqueeze(-1))
    bad = ~torch.isfinite(cos)  # 0/0 for zero rows; tiny or huge rows whose product left range
    if bool(bad.any()):
        tiny = torch.finfo(x.dtype).tiny
        unit = x / norms.clamp_min(tiny).unsqueeze(-1)
        g0_unit = g0 / g0_norm.clamp_min(tiny).unsqueeze(-1)
        safe = unit @ g0_unit if x.dim() == 2 else (unit @ g0_unit.unsqueeze(-1)).squeeze(-1)
        cos = torch.where(bad, torch.nan_to_num(safe, nan=0.0), cos)
    trust = torch.relu(cos.clamp(-1.0, 1.0))
    trust = torch.where(norms > 0, trust, 0)  # a zero row has no direction to trust
    total = trust.sum(dim=-1, keepdim=True)
    scale = torch.where(norms > 0, g0_norm.unsqueeze(-1) / norms.clamp_min(tiny_of(x)), 0)
    w = torch.where(total > 0, trust / total.clamp_min(tiny_of(x)) * scale, 0)
    return torch.where(g0_norm.unsqueeze(-1) > 0, w, 0)


def tiny_of(x: Tensor) -> float:
    """The smallest positive normal number of x's dtype (a safe divisor floor)."""
    return torch.finfo(x.dtype).tiny


def _fltrust(x: Tensor, server_update: Tensor) -> tuple[Tensor, Tensor]:
    g0 = check_vector(server_update, x, "server_update", "fltrust")
    w = fltrust_weights(x, g0)
    return weighted_sum(w, x), w


def fltrust(updates: Tensor, server_update: Tensor) -> Tensor:
    """FLTrust (Cao et al., NDSS 2021, §III-C, Eq. 4): Σᵢ TSᵢ·(‖Δ₀‖/‖Δᵢ‖)·Δᵢ / Σᵢ TSᵢ.

    Trust scores TSᵢ = ReLU(cos(Δᵢ, Δ₀)) against the server update Δ₀ computed on the root
    set; every update is rescaled to ‖Δ₀‖. A zero update (‖Δᵢ‖ = 0) gets trust and weight
    0. If every TSᵢ is 0 (or Δ₀ = 0) the result is the zero update, i.e. the model is not
    changed. Rows with NaN/Inf are excluded (warning); a non-finite or wrongly shaped Δ₀
    raises ValueError. A batch (..., n, d) takes Δ₀ of shape (..., d).
    """
    return fltrust_rule()(updates, batch_params={"server_update": server_update})[0]
