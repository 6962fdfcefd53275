"""Pairwise squared distances between updates, for Krum, Multi-Krum and Bulyan.

Every function takes rows (n, d) or a batch (B, n, d) of independent problems.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GRAM_CHUNK = 4096
"""Coordinates per partial Gram matrix; the partial matrices are added up in float64."""

GRAM_BLOCK = 1 << 21
"""Elements (rows × coordinates, all replicas) centred at once: the chunks of one block are
multiplied by one batched product, so a call makes a few large parallel operations rather
than many small ones (which stall each other on a busy CPU)."""

GRAM_HALVES_FROM = 32
"""From this many rows on, each chunk's product skips the upper-right block (the Gram matrix
is symmetric): two products, for the rows' first half against itself and the second half
against all rows, ¾ of the full product's arithmetic."""


def gram(y: Tensor, centre: Tensor | None = None,
         dtype: torch.dtype | None = None) -> Tensor:
    """(..., n, n) float64 Gram matrix of the rows y (..., n, d) minus ``centre`` (..., d), in
    ``dtype`` (default y's), summed over ``GRAM_CHUNK`` columns; ``centre=None`` centres the
    rows at their mean.

    Each chunk is one BLAS product in that dtype (for n ≥ ``GRAM_HALVES_FROM`` two, of the
    lower block triangle only); adding the chunks in float64 keeps float32 rounding at
    ≈ 10⁻⁸ relative for d = 10⁶ (one float32 product over all d columns: up to 10⁻⁴, enough
    to reorder near-tied Krum scores), at the same cost. The rows are centred a block of
    chunks at a time (``GRAM_BLOCK``) into one reused buffer, so no centred (n, d) copy is
    written and y is read from memory once (``centre=None``: each block's columns are
    centred at their own mean, which is the rows' mean restricted to those columns). No
    gradient flows through it (the rules using it only select rows).
    """
    y = y.detach()
    lead, (n, d) = y.shape[:-2], y.shape[-2:]
    dtype = y.dtype if dtype is None else dtype
    h = n // 2 if n >= GRAM_HALVES_FROM else 0
    chunks = max(1, min(GRAM_BLOCK // (max(1, math.prod(lead)) * n * GRAM_CHUNK),
                        math.ceil(d / GRAM_CHUNK)))
    g = torch.zeros(*lead, n, n, dtype=torch.float64, device=y.device)
    buf = torch.empty(*lead, chunks, n, min(GRAM_CHUNK, d), dtype=dtype, device=y.device)
    for start in range(0, d, chunks * GRAM_CHUNK):  # blocks of chunks of coordinates
        part = y[..., start:start + chunks * GRAM_CHUNK]
        full, rest = divmod(part.shape[-1], GRAM_CHUNK)
        if full:  # chunk j of the block -> buf[..., j, :, :], contiguous for one batched product
            _centre_into(buf[..., :full, :, :], part[..., :full * GRAM_CHUNK], centre, start)
            _add_products(g, buf[..., :full, :, :], h)
        if rest:
            _centre_into(buf[..., :1, :, :rest], part[..., full * GRAM_CHUNK:], centre,
                         start + full * GRAM_CHUNK)
            _add_products(g, buf[..., :1, :, :rest], h)
    if h:
        g[..., :h, h:] = g[..., h:, :h].transpose(-1, -2)
    return g


def _centre_into(out: Tensor, part: Tensor, centre: Tensor | None, start: int) -> None:
    """out (..., k, n, c) = the columns part (..., n, k·c) minus ``centre`` (None: their mean),
    chunk j of c columns into out[..., j, :, :]."""
    k, c = out.shape[-3], out.shape[-1]
    src = part.unflatten(-1, (k, c)).movedim(-2, -3)
    if centre is None:
        shift = src.mean(dim=-2, keepdim=True, dtype=out.dtype)
    else:
        shift = centre[..., start:start + k * c].to(out.dtype).unflatten(-1, (k, c)).unsqueeze(-2)
    torch.sub(src, shift, out=out)


def _add_products(g: Tensor, chunks: Tensor, h: int) -> None:
    """g += Σ_chunks cᵢcᵀ (..., n, n) in float64, each chunk's product in its own dtype; with
    h > 0 only the rows' first h against themselves and the rest against all rows."""
    if h:
        top = chunks[..., :h, :]
        g[..., :h, :h] += torch.matmul(top, top.transpose(-1, -2)).double().sum(dim=-3)
    g[..., h:, :] += torch.matmul(chunks[..., h:, :], chunks.transpose(-1, -2)).double().sum(dim=-3)


def _sq_distances_around(x: Tensor, centre: Tensor | None,
                         dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """‖xᵢ − xⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ with G the Gram matrix of the rows centred at ``centre``
    (None: their mean).

    Returns the (..., n, n) distances (clamped at 0, exactly symmetric, zero diagonal, +inf
    rather than NaN where they overflow) and the squared norms Gᵢᵢ = ‖xᵢ − centre‖².
    """
    g = gram(x, centre, dtype)
    g = (g + g.transpose(-1, -2)) * 0.5  # exactly symmetric, so tied Krum scores stay tied
    sq = g.diagonal(dim1=-2, dim2=-1).clone()
    dist = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * g).clamp_min_(0)
    dist = torch.nan_to_num_(dist, nan=torch.inf, posinf=torch.inf)
    dist.diagonal(dim1=-2, dim2=-1).zero_()
    return dist, sq


def _mean_of(x: Tensor, dtype: torch.dtype) -> Tensor:
    n = x.shape[-2]
    w = torch.full(x.shape[:-1], 1.0 / n, dtype=dtype, device=x.device)
    y = x.to(dtype)
    return w @ y if x.dim() == 2 else (w.unsqueeze(-2) @ y).squeeze(-2)  # Σ xᵢ/n


def _centred_sq_distances(x: Tensor, dtype: torch.dtype) -> Tensor:
    dist, sq = _sq_distances_around(x, None, dtype)
    typical = dist.median(dim=-1).values
    medoid = typical.argmin(dim=-1, keepdim=True)
    dragged = sq.gather(-1, medoid) > typical.gather(-1, medoid)  # the mean left the bulk
    if x.dim() == 2:
        if bool(dragged):
            near = torch.topk(dist[int(medoid)], math.ceil(x.shape[0] / 2), largest=False).indices
            dist, _ = _sq_distances_around(x, _mean_of(x[near], dtype), dtype)
        return dist
    rows = dragged.squeeze(-1).nonzero().squeeze(1)
    if rows.numel():  # re-centre those replicas only, as one batch
        sub = dist[rows].gather(-2, medoid[rows, :, None].expand(-1, 1, x.shape[-2])).squeeze(-2)
        near = torch.topk(sub, math.ceil(x.shape[-2] / 2), dim=-1, largest=False).indices
        picked = x[rows].gather(-2, near.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        dist[rows], _ = _sq_distances_around(x[rows], _mean_of(picked, dtype), dtype)
    return dist


def pairwise_sq_distances(x: Tensor) -> Tensor:
    """(n, n) float64 squared Euclidean distances between the rows of ``x`` (n, d); (B, n, n)
    for a batch (B, n, d), each replica as computed alone.

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
    if x.dtype != torch.float64:
        over = ~torch.isfinite(dist).flatten(-2).all(dim=-1)
        if x.dim() == 2 and bool(over):
            dist = _centred_sq_distances(x, torch.float64)
        elif x.dim() == 3 and bool(over.any()):
            rows = over.nonzero().squeeze(1)
            dist[rows] = _centred_sq_distances(x[rows], torch.float64)
    return dist
