"""Linear rules: FedAvg's (weighted) mean and FLTrust's trust-weighted sum.

Their per-client weight is the coefficient of Δᵢ in the output, out = Σᵢ wᵢΔᵢ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import RuleCall, check_updates, check_vector, row_norms


def _mean(x: Tensor) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    return w @ x, w  # Σ (Δᵢ/n): partial sums never exceed max|Δᵢⱼ|, so no overflow


def _weighted_mean(x: Tensor, client_weights: Tensor) -> tuple[Tensor, Tensor]:
    total = client_weights.sum()
    if not bool(total > 0):
        raise ValueError("weighted_mean: the weights of the finite updates sum to 0")
    w = client_weights / total
    return w @ x, w


def check_client_weights(weights: Tensor | Sequence[float], n: int, like: Tensor,
                         rule: str = "weighted_mean") -> Tensor:
    """(n,) finite, non-negative weights on the updates' device and dtype."""
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if w.dim() != 1 or w.shape[0] != n:
        raise ValueError(f"{rule}: expected {n} weights (one per update), got shape "
                         f"{tuple(w.shape)}")
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
    """:func:`fltrust` as a :class:`RuleCall`; pass ``server_update=Δ₀`` per call."""
    return RuleCall("fltrust", _fltrust)


def mean(updates: Tensor) -> Tensor:
    """FedAvg's average (McMahan et al., AISTATS 2017, Alg. 1 with equal n_k): (1/n) Σᵢ Δᵢ.

    Not robust: one large finite row moves it arbitrarily. Rows with NaN/Inf are excluded
    (warning); all rows non-finite → ValueError.
    """
    return mean_rule()(updates)[0]


def weighted_mean(updates: Tensor, weights: Tensor | Sequence[float]) -> Tensor:
    """FedAvg's weighted average (McMahan et al. 2017, Alg. 1): Σᵢ pᵢΔᵢ / Σᵢ pᵢ, pᵢ ≥ 0.

    ``weights`` (n,) are e.g. the clients' sample counts n_k. Rows with NaN/Inf are excluded
    (warning) and the remaining weights renormalised; ValueError if those sum to 0 or the
    weights are negative, non-finite or of the wrong length.
    """
    x = check_updates(updates, "weighted_mean")
    w = check_client_weights(weights, x.shape[0], x)
    return weighted_mean_rule()(x, row_params={"client_weights": w})[0]


def fltrust_weights(x: Tensor, server_update: Tensor) -> Tensor:
    """(n,) FLTrust coefficients wᵢ = TSᵢ/Σⱼ TSⱼ · ‖Δ₀‖/‖Δᵢ‖ with TSᵢ = ReLU(cos(Δᵢ, Δ₀)).

    Zero rows get TS = 0. All-zero trust, or Δ₀ = 0, gives all-zero weights.
    """
    g0_norm = torch.linalg.vector_norm(server_update)
    if not bool(g0_norm > 0):
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    norms = row_norms(x)
    cos = (x @ server_update) / (norms * g0_norm)
    bad = ~torch.isfinite(cos)  # 0/0 for zero rows, inf/inf for rows whose dot overflowed
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(1)
        unit = x[rows] / norms[rows, None].clamp_min(torch.finfo(x.dtype).tiny)
        cos[rows] = torch.nan_to_num((unit @ server_update) / g0_norm, nan=0.0)
    trust = torch.relu(cos.clamp(-1.0, 1.0))
    total = trust.sum()
    if not bool(total > 0):
        return torch.zeros_like(trust)
    return trust / total * (g0_norm / norms)


def _fltrust(x: Tensor, server_update: Tensor) -> tuple[Tensor, Tensor]:
    g0 = check_vector(server_update, x, "server_update", "fltrust")
    w = fltrust_weights(x, g0)
    return w @ x, w


def fltrust(updates: Tensor, server_update: Tensor) -> Tensor:
    """FLTrust (Cao et al., NDSS 2021, §III-C): Σᵢ TSᵢ·(‖Δ₀‖/‖Δᵢ‖)·Δᵢ / Σᵢ TSᵢ.

    Trust scores TSᵢ = ReLU(cos(Δᵢ, Δ₀)) against the server update Δ₀ computed on the root
    set; every update is rescaled to ‖Δ₀‖. If every TSᵢ is 0 (or Δ₀ = 0) the result is the
    zero update, i.e. the model is not changed. Rows with NaN/Inf are excluded (warning);
    a non-finite or wrongly shaped Δ₀ raises ValueError.
    """
    return fltrust_rule()(updates, server_update=server_update)[0]
