"""Coordinate-wise rules: median, trimmed mean (Yin et al. 2018) and L2A's clipping median.

Their per-client *weight* is the share of output slots each client filled: in every
coordinate the rule averages K values (K = 1 or 2 for the median, n − 2f for the trimmed
mean); a client whose value is one of them gets 1/K of that coordinate, and the shares are
averaged over the d coordinates, so the weights sum to 1. Tied values split their slots
equally among the tied clients. Every rule accepts (n, d) or a batch (..., n, d); columns are
independent, so a batched call equals separate calls.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ._checks import RuleCall, check_count, check_positive, row_norms
from .averaging import _mean


BLOCK_BYTES = 1 << 22
"""On CPU, the passes after the sort run on column blocks of about this many bytes (4 MiB)."""


def sort_columns(x: Tensor) -> Tensor:
    """A copy of x (..., n, d) with every column sorted in increasing order.

    On CPU (float32/float64, no autograd) this is ``numpy.sort`` along axis 0, whose SIMD
    sorting networks (x86-simd-sort) are much faster than ``torch.sort``/``torch.kthvalue``
    along dim 0 there (``benchmarks/RESULTS.md``); elsewhere ``torch.sort``. Returns a
    tensor on x's device.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) \
            and not x.requires_grad:
        return torch.from_numpy(np.sort(x.numpy(), axis=-2))
    return torch.sort(x, dim=-2).values


def blockwise(fn: Callable[[slice], tuple[Tensor, Tensor | None]],
              x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Run ``fn(columns) -> (out (..., b), per-row sums (..., n) or None)`` on column blocks
    of x (..., n, d); concatenate the outputs and add up the per-row sums.

    Cache blocking, not a loop over coordinates: each call is vectorised over its block.
    On CPU the blocks' temporaries stay in cache and reuse allocator memory instead of
    page-faulting fresh (n, d) buffers (less CPU time; ``benchmarks/RESULTS.md``). On
    other devices there is a single block. The block width depends on n only, so every
    replica of a batch adds its per-row sums in the same order as a separate call.
    """
    n, d = x.shape[-2:]
    step = d if x.device.type != "cpu" else max(1024, BLOCK_BYTES // (x.element_size() * n))
    if step >= d:
        return fn(slice(0, d))
    outs, total = [], None
    for start in range(0, d, step):
        out, w = fn(slice(start, start + step))
        outs.append(out)
        if w is not None:
            total = w if total is None else total + w
    return torch.cat(outs, dim=-1), total


def _slot_shares(x: Tensor, lo: Tensor, hi: Tensor, a: Tensor, b: Tensor,
                 inner: Tensor | None) -> Tensor:
    """(..., n) each row's number of kept slots summed over the block's coordinates.

    ``inner`` marks values strictly between lo and hi (each fills one slot); the a (resp. b)
    slots holding lo's (resp. hi's) value are split equally among the rows with that value.
    lo, hi, a, b are (..., 1, b) rows of the block.
    """
    at_lo, at_hi = x == lo, x == hi
    slots = (at_lo * (a / at_lo.sum(dim=-2, keepdim=True))).sum(dim=-1)
    slots += (at_hi * (b / at_hi.sum(dim=-2, keepdim=True))).sum(dim=-1)
    if inner is not None:
        slots += inner.sum(dim=-1, dtype=x.dtype)
    return slots


def _trimmed_block(x: Tensor, s: Tensor, f: int, shares: bool) -> tuple[Tensor, Tensor | None]:
    n = x.shape[-2]
    k = n - 2 * f
    kept = s[..., f:n - f, :]  # the k middle order statistics of every column
    lo, hi = kept[..., :1, :], kept[..., -1:, :]
    total = lo.clone() if k == 1 else lo + hi if k == 2 else kept.sum(dim=-2, keepdim=True)
    total = total.squeeze(-2)
    if not shares:
        return total, None
    if f == 0 or not bool(((s[..., f - 1:f, :] == lo) | (s[..., n - f:n - f + 1, :] == hi)).any()):
        # no value straddles a trimming boundary: the kept rows are those in [lo, hi]
        return total, ((x >= lo) & (x <= hi)).sum(dim=-1, dtype=x.dtype)
    # (counts are small integers, so this path gives the fast path's shares exactly where
    # no value straddles: a batch taking it for one replica changes no other replica)
    a = (kept == lo).sum(dim=-2, keepdim=True).to(x.dtype)
    b = torch.where(lo == hi, 0, (kept == hi).sum(dim=-2, keepdim=True)).to(x.dtype)
    inner = (x > lo) & (x < hi) if k > 2 else None
    return total, _slot_shares(x, lo, hi, a, b, inner)


def trimmed_sum(x: Tensor, f: int, shares: bool = True) -> tuple[Tensor, Tensor | None]:
    """Sum over each column of x (..., n, d) of its n − 2f middle order statistics, and the
    rows' kept slots (..., n).

    One column sort (:func:`sort_columns`); the sum runs over the kept order statistics
    only, so huge trimmed values cannot swamp the kept ones. The shares (n,) count, per row,
    the slots it filled over all coordinates, slots holding a value shared by several rows
    being split equally among them; ``shares=False`` skips them.
    """
    s = sort_columns(x)
    return blockwise(lambda c: _trimmed_block(x[..., c], s[..., c], f, shares), x)


def _closest_block(x: Tensor, s: Tensor, beta: int) -> tuple[Tensor, Tensor]:
    theta = x.shape[-2]
    mid = (theta - 1) // 2
    med = s[..., mid, :] if theta % 2 else s[..., mid, :] * 0.5 + s[..., mid + 1, :] * 0.5
    # the β values closest to med are β consecutive sorted values: the radius, i.e. the β-th
    # smallest |x − med|, is the smallest over those windows of their largest distance
    radius = torch.maximum(med.unsqueeze(-2) - s[..., :theta - beta + 1, :],
                           s[..., beta - 1:, :] - med.unsqueeze(-2)).amin(dim=-2)
    med, radius = med.unsqueeze(-2), radius.unsqueeze(-2)
    gap = (x - med).abs_()
    within = gap <= radius
    plain = within.sum(dim=-2) == beta  # no ties at the radius (the usual case)
    if bool(plain.all()):
        return torch.where(within, x, 0).sum(dim=-2) / beta, within.sum(dim=-1, dtype=x.dtype)
    inside, edge = gap < radius, gap == radius
    n_edge = edge.sum(dim=-2, keepdim=True).to(x.dtype)
    spare = beta - inside.sum(dim=-2, keepdim=True).to(x.dtype)  # slots for values at the radius
    total = torch.where(inside, x, 0).sum(dim=-2)
    total += spare.squeeze(-2) * (torch.where(edge, x, 0).sum(dim=-2) / n_edge.squeeze(-2))
    # per column: a column without ties keeps the plain sum, whatever its neighbours do
    total = torch.where(plain, torch.where(within, x, 0).sum(dim=-2), total)
    share = torch.where(plain.unsqueeze(-2), within.to(x.dtype), inside + edge * (spare / n_edge))
    return total / beta, share.sum(dim=-1)


def closest_to_median_mean(x: Tensor, beta: int) -> tuple[Tensor, Tensor]:
    """Bulyan's step 2 (El Mhamdi et al. 2018, Alg. 1): per coordinate, the mean of the β
    values of x (..., θ, d) closest to the coordinate-wise median (mean of the two middle
    values for even θ). Values tied at the β-th distance share the remaining slots equally
    (their mean fills them). Returns the (..., d) result and each row's kept slots (..., θ),
    summed."""
    s = sort_columns(x)
    out, slots = blockwise(lambda c: _closest_block(x[..., c], s[..., c], beta), x)
    assert slots is not None
    return out, slots


def _trimmed_mean(x: Tensor, f: int) -> tuple[Tensor, Tensor]:
    if f == 0:
        return _mean(x)
    k = x.shape[-2] - 2 * f
    total, slots = trimmed_sum(x, f)
    return total / k, slots / (k * x.shape[-1])


def _median(x: Tensor) -> tuple[Tensor, Tensor]:
    n = x.shape[-2]
    f = (n - 1) // 2
    total, slots = trimmed_sum(x, f)
    k = n - 2 * f
    return (total if k == 1 else total * 0.5), slots / (k * x.shape[-1])  # k = 2: lo + hi


def _clipped_median(x: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    scale = (threshold / row_norms(x)).clamp(max=1.0)
    return _median(x * scale.unsqueeze(-1))


def median_rule() -> RuleCall:
    """:func:`median` as a :class:`RuleCall` (returns weights too)."""
    return RuleCall("median", _median)


def trimmed_mean_rule(f: int) -> RuleCall:
    """:func:`trimmed_mean` with a validated f."""
    f = check_count(f, "f", "trimmed_mean")
    return RuleCall("trimmed_mean", _trimmed_mean, {"f": f}, min_rows=2 * f + 1,
                    requirement=f"n > 2f = {2 * f}")


def clipped_median_rule(threshold: float = 2.0) -> RuleCall:
    """:func:`clipped_median` with a validated threshold."""
    threshold = check_positive(threshold, "threshold", "clipped_median")
    return RuleCall("clipped_median", _clipped_median, {"threshold": threshold})


def median(updates: Tensor) -> Tensor:
    """Coordinate-wise median (Yin et al., ICML 2018, Def. "median"): medⱼ{Δ₁ⱼ, …, Δₙⱼ}.

    For even n each coordinate is the mean of its two middle values (the standard median;
    ``torch.median`` would return the lower one). Rows with NaN/Inf are excluded (warning);
    all rows non-finite → ValueError.
    """
    return median_rule()(updates)[0]


def trimmed_mean(updates: Tensor, f: int) -> Tensor:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018, Def. "trimmed mean").

    In each coordinate drop the f largest and f smallest values and average the other n − 2f
    (f = βn in the paper's notation). Needs n > 2f (ValueError otherwise); f = 0 is the mean.
    Rows with NaN/Inf are excluded (warning) and n counts the finite rows only.
    """
    return trimmed_mean_rule(f)(updates)[0]


def clipped_median(updates: Tensor, threshold: float = 2.0) -> Tensor:
    """L2A's clipping median (Li, Sun & Zheng, NeurIPS 2022, §6.1; clipping: Sun et al. 2019).

    Scale each Δᵢ by min(1, threshold/‖Δᵢ‖₂), then take the coordinate-wise
    :func:`median` (mean of the two middle values for even n). Default threshold 2 (L2A).
    Rows with NaN/Inf are excluded (warning) before clipping.
    """
    return clipped_median_rule(threshold)(updates)[0]
