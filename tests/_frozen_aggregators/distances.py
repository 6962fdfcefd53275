"""Pairwise squared distances between updates, for Krum, Multi-Krum and Bulyan."""

from __future__ import annotations

import math

import torch
from torch import Tensor

GRAM_CHUNK = 4096
"""Coordinates per partial Gram matrix; the partial matrices are added up in float64."""


def gram(y: Tensor) -> Tensor:
    """(n, n) float64 Gram matrix y·yᵀ of y (n, d), summed over chunks of ``GRAM_CHUNK`` columns.

    Each chunk is one BLAS product in y's dtype; adding the chunks in float64 keeps float32
    rounding at ≈ 10⁻⁸ relative for d = 10⁶ (one float32 product over all d columns: up to
    10⁻⁴, enough to reorder near-tied Krum scores), at the same cost.
    """
    n, d = y.shape
    g = torch.zeros(n, n, dtype=torch.float64, device=y.device)
    for start in range(0, d, GRAM_CHUNK):  # blocks of coordinates, each a vectorised product
        part = y[:, start:start + GRAM_CHUNK]
        g += (part @ part.T).double()
    return g


def _sq_distances_around(x: Tensor, centre: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """‖xᵢ − xⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ with G the Gram matrix of the rows centred at ``centre``.

    Returns the (n, n) distances (clamped at 0, exactly symmetric, zero diagonal, +inf
    rather than NaN where they overflow) and the squared norms Gᵢᵢ = ‖xᵢ − centre‖².
    """
    g = gram(x.to(dtype) - centre.to(dtype))
    g = (g + g.T) * 0.5  # exactly symmetric, so tied Krum scores stay tied
    sq = g.diagonal().clone()
    dist = (sq[:, None] + sq[None, :] - 2 * g).clamp_min_(0)
    dist = torch.nan_to_num_(dist, nan=torch.inf, posinf=torch.inf)
    dist.fill_diagonal_(0)
    return dist, sq


def _mean_of(x: Tensor, dtype: torch.dtype) -> Tensor:
    n = x.shape[0]
    return torch.full((n,), 1.0 / n, dtype=dtype, device=x.device) @ x.to(dtype)  # Σ xᵢ/n


def _centred_sq_distances(x: Tensor, dtype: torch.dtype) -> Tensor:
    dist, sq = _sq_distances_around(x, _mean_of(x, dtype), dtype)
    typical = dist.median(dim=1).values
    medoid = int(typical.argmin())
    if bool(sq[medoid] > typical[medoid]):  # the mean was dragged away from the bulk
        near = torch.topk(dist[medoid], math.ceil(x.shape[0] / 2), largest=False).indices
        dist, _ = _sq_distances_around(x, _mean_of(x[near], dtype), dtype)
    return dist


def pairwise_sq_distances(x: Tensor) -> Tensor:
    """(n, n) float64 squared Euclidean distances between the rows of ``x`` (n, d).

    From one Gram matrix (:func:`gram`, O(n²d) in BLAS) of the rows centred at their mean,
    which keeps the cancellation in Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ small. If the mean is dragged away from
    the bulk (the approximate medoid, the row with the smallest median distance, lies
    further from the mean than from its typical neighbour: huge Byzantine rows), the Gram
    matrix is recomputed centred at the mean of the ⌈n/2⌉ rows nearest the medoid, so the
    inliers' distances keep their relative precision next to rows 10⁶ times larger. A pass
    whose float32 squares overflow (rows ≳ 10¹⁹) is redone in float64. Entries are clamped
    at 0, exactly symmetric with a zero diagonal, and +inf (never NaN) where even float64
    overflows.
    """
    dist = _centred_sq_distances(x, x.dtype)
    if x.dtype != torch.float64 and not bool(torch.isfinite(dist).all()):
        dist = _centred_sq_distances(x, torch.float64)
    return dist
