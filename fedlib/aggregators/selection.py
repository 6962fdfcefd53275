"""Distance-based selection: Krum, Multi-Krum (Blanchard et al. 2017), Bulyan (El Mhamdi et al.).

Every rule accepts (n, d) or a batch (B, n, d) of independent problems.
Weights: Krum is one-hot on the selected client, multi-Krum 1/m on each of the m
selected; Bulyan reports each client's share of the β averaged slots per coordinate
(0 for clients its Krum stage did not select), averaged over coordinates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import RuleCall, check_count, weighted_sum
from .coordinate import closest_to_median_mean
from .distances import pairwise_sq_distances


def krum_scores(dist: Tensor, f: int) -> Tensor:
    """Krum scores s(i) = Σ_{i→j} ‖Δᵢ − Δⱼ‖² over the n − f − 2 nearest other rows (§4).

    ``dist`` is (..., n, n); the scores are (..., n).
    """
    n = dist.shape[-1]
    off = dist.clone()
    off.diagonal(dim1=-2, dim2=-1).fill_(torch.inf)
    return torch.topk(off, n - f - 2, dim=-1, largest=False).values.sum(dim=-1)


def total_distance(dist: Tensor, live: Tensor | None = None) -> Tensor:
    """(..., n) Σⱼ ‖Δᵢ − Δⱼ‖² over the ``live`` columns: the tie-break for equal Krum scores."""
    return (dist if live is None else torch.where(live.unsqueeze(-2), dist, 0)).sum(dim=-1)


def lex_argmin(primary: Tensor, secondary: Tensor) -> Tensor:
    """Index of the smallest ``primary`` along the last dimension; exact ties go to the
    smallest ``secondary``, then to the lowest index (a permutation-invariant choice unless
    both keys tie)."""
    tied = primary == primary.min(dim=-1, keepdim=True).values
    sec = torch.where(tied, secondary, torch.inf)
    return (tied & (sec == sec.min(dim=-1, keepdim=True).values)).int().argmax(dim=-1)


def one_hot_rows(index: Tensor, n: int, like: Tensor, value: float = 1.0) -> Tensor:
    """(..., n) weights: ``value`` at ``index`` ((...,) or (..., k)), 0 elsewhere."""
    idx = index if index.dim() == like.dim() - 1 else index.unsqueeze(-1)
    w = torch.zeros(*like.shape[:-2], n, dtype=like.dtype, device=like.device)
    return w.scatter_(-1, idx, value)


def _krum(x: Tensor, f: int, unchecked: bool = False) -> tuple[Tensor, Tensor]:
    dist = pairwise_sq_distances(x, unchecked)
    best = lex_argmin(krum_scores(dist, f), total_distance(dist))
    if x.dim() == 2:
        w = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        w[best] = 1.0
        return x[best].clone(), w
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, best], one_hot_rows(best, x.shape[-2], x)


def _multi_krum(x: Tensor, f: int, m: int | None,
                unchecked: bool = False) -> tuple[Tensor, Tensor]:
    n = x.shape[-2]
    m = n - f if m is None else m
    dist = pairwise_sq_distances(x, unchecked)
    scores = krum_scores(dist, f)
    by_total = torch.argsort(total_distance(dist), dim=-1, stable=True)  # tie-break, as Krum
    order = torch.argsort(scores.gather(-1, by_total), dim=-1, stable=True)[..., :m]
    chosen = by_total.gather(-1, order)
    if x.dim() == 2:
        w = torch.zeros(n, dtype=x.dtype, device=x.device)
        w[chosen] = 1.0 / m
        return w @ x, w
    w = one_hot_rows(chosen, n, x, 1.0 / m)
    return weighted_sum(w, x), w


def krum_rule(f: int) -> RuleCall:
    """:func:`krum` with a validated f."""
    f = check_count(f, "f", "krum")
    return RuleCall("krum", _krum, {"f": f}, min_rows=2 * f + 3,
                    requirement=f"n > 2f + 2 = {2 * f + 2}", checks_rows=True)


def multi_krum_rule(f: int, m: int | None = None) -> RuleCall:
    """:func:`multi_krum` with validated f and m."""
    f = check_count(f, "f", "multi_krum")
    if m is not None:
        m = check_count(m, "m", "multi_krum", minimum=1)
    return RuleCall("multi_krum", _multi_krum, {"f": f, "m": m},
                    min_rows=max(2 * f + 3, m or 0),
                    requirement=f"n > 2f + 2 = {2 * f + 2}" + (f" and n ≥ m = {m}" if m else ""),
                    checks_rows=True)


def krum(updates: Tensor, f: int) -> Tensor:
    """Krum (Blanchard et al., NeurIPS 2017, §4): the Δᵢ with the smallest score s(i).

    s(i) = Σ_{i→j} ‖Δᵢ − Δⱼ‖², the sum over the n − f − 2 nearest neighbours of Δᵢ. Needs
    n > 2f + 2 (ValueError otherwise). Exact score ties (e.g. two mutual nearest neighbours
    when n − f − 2 = 1) go to the row with the smaller total distance to all rows, then to
    the lower index, so the choice does not depend on the row order. Rows with
    NaN/Inf are excluded (warning) and the condition is checked on the finite rows with f
    unchanged. Distances: :func:`fedlib.aggregators.distances.pairwise_sq_distances`.
    """
    return krum_rule(f)(updates)[0]


def multi_krum(updates: Tensor, f: int, m: int | None = None) -> Tensor:
    """Multi-Krum (Blanchard et al. 2017): the mean of the m updates with the lowest Krum scores.

    m defaults to n − f (m = 1 is Krum, m = n the mean); needs n > 2f + 2 and m ≤ n.
    Ties are broken as in :func:`krum`.
    Rows with NaN/Inf are excluded (warning); n counts the finite rows, f is unchanged.
    """
    return multi_krum_rule(f, m)(updates)[0]


def bulyan_selection(dist: Tensor, f: int, theta: int) -> Tensor:
    """(..., θ) indices chosen by Bulyan's recursive Krum (El Mhamdi et al. 2018, Alg. 1, step 1).

    Each step runs Krum on the rows not yet chosen and moves the winner to the selection.
    The loop runs θ times over the (..., n, n) distance matrix only (cost independent of d).
    On r remaining rows Krum sums over r − f − 2 neighbours; in the last steps, where that
    is < 1 (possible for f ≤ 1), one neighbour is used. Exact ties (with one neighbour, the
    two rows of the closest pair always tie) go to the row with the smaller total distance
    to the remaining rows, as in :func:`krum`.
    """
    n = dist.shape[-1]
    off = dist.clone()
    off.diagonal(dim1=-2, dim2=-1).fill_(torch.inf)
    taken = torch.zeros(dist.shape[:-1], dtype=torch.bool, device=dist.device)
    chosen = []
    for step in range(theta):
        remaining = n - step
        k = min(max(remaining - f - 2, 1), remaining - 1)
        if k == 0:
            best = (~taken).int().argmax(dim=-1)  # the one row left
        else:
            scores = torch.topk(off, k, dim=-1, largest=False).values.sum(dim=-1)
            best = lex_argmin(scores.masked_fill(taken, torch.inf),
                              total_distance(dist, ~taken))
        chosen.append(best.unsqueeze(-1))
        taken.scatter_(-1, best.unsqueeze(-1), True)
        off.masked_fill_(taken.unsqueeze(-2), torch.inf)
    return torch.cat(chosen, dim=-1)


def _bulyan(x: Tensor, f: int) -> tuple[Tensor, Tensor]:
    n, d = x.shape[-2:]
    theta = n - 2 * f
    beta = theta - 2 * f
    chosen = bulyan_selection(pairwise_sq_distances(x), f, theta)
    picked = x.gather(-2, chosen.unsqueeze(-1).expand(*chosen.shape, d))
    value, slots = closest_to_median_mean(picked, beta)
    w = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    w.scatter_(-1, chosen, slots / (beta * d))
    return value, w


def bulyan_rule(f: int) -> RuleCall:
    """:func:`bulyan` with a validated f."""
    f = check_count(f, "f", "bulyan")
    return RuleCall("bulyan", _bulyan, {"f": f}, min_rows=4 * f + 3,
                    requirement=f"n ≥ 4f + 3 = {4 * f + 3}")


def bulyan(updates: Tensor, f: int) -> Tensor:
    """Bulyan (El Mhamdi et al., ICML 2018, Alg. 1) over Krum.

    1. Recursive Krum picks θ = n − 2f updates (:func:`bulyan_selection`).
    2. In each coordinate, average the β = θ − 2f picked values closest to their
       coordinate-wise median (mean of the two middle values for even θ). Values tied at
       the β-th distance share the remaining slots equally (their mean fills them).
    Needs n ≥ 4f + 3 (ValueError otherwise). Rows with NaN/Inf are excluded (warning); n
    counts the finite rows, f is unchanged.
    """
    return bulyan_rule(f)(updates)[0]
