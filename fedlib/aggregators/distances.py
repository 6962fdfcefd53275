"""Pairwise squared distances between updates, for Krum, Multi-Krum and Bulyan.

Every function takes rows (n, d) or a batch (B, n, d) of independent problems.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import NonFiniteRows, finite_rows

GRAM_CHUNK = 4096
"""Coordinates per partial Gram matrix; the partial matrices are added up in float64."""

GRAM_BLOCK = 1 << 22
"""Elements (rows × coordinates, all replicas) multiplied at once: the chunks of one block
are multiplied by one batched product, so a call makes a few large parallel operations
rather than many small ones (which stall each other on a busy CPU)."""

GRAM_HALVES_FROM = 32
"""From this many rows on, each chunk's product skips the blocks above the diagonal (the
Gram matrix is symmetric): for fewer than 2 · ``GRAM_ROW_BLOCK`` rows two products, the
rows' first half against itself and the second half against all rows (¾ of the full
product's arithmetic); from there on one product per ``GRAM_ROW_BLOCK`` rows against the
rows up to its own (⅔ of the arithmetic for n = 100)."""

GRAM_ROW_BLOCK = 32
"""Rows per block of the lower block triangle, the last block taking the remainder:
boundaries at multiples of 32 rows keep the BLAS kernels at full speed (n = 100: 32, 32,
36 rows, 14 % faster than halves of 50 rows, which save only 8 % of the full product's
time)."""

UNCENTRED_FROM = 2
"""From this many chunks (of ``GRAM_CHUNK`` columns) and ``UNCENTRED_ROWS_FROM`` rows on,
``gram(y)`` first multiplies the rows as they are and centres each chunk's product exactly in
float64 (no centring pass over y); chunks that fail ``UNCENTRED_MEAN_RATIO`` are centred first,
as are all later ones."""

UNCENTRED_ROWS_FROM = 20
"""n independent rows have ‖m‖² ≈ median ‖yᵢ − m‖² / n: with fewer than about
1 / ``UNCENTRED_MEAN_RATIO`` rows their chunks fail the test, and trying costs a product."""

UNCENTRED_MEAN_RATIO = 1 / 16
"""A chunk's uncentred product is kept when its rows' mean m satisfies ‖m‖² ≤ this ×
the median over rows of ‖yᵢ − m‖²: float32 rounding of yᵢ·yⱼ scales with ‖yᵢ‖‖yⱼ‖ ≤
(‖yᵢ − m‖ + ‖m‖)(‖yⱼ − m‖ + ‖m‖), so for rows at the median distance from the mean the
rounding bound is at most (1 + 1/4)² ≈ 1.56 times that of the centred rows."""


def gram(y: Tensor, centre: Tensor | None = None,
         dtype: torch.dtype | None = None) -> Tensor:
    """(..., n, n) float64 Gram matrix of the rows y (..., n, d) minus ``centre`` (..., d), in
    ``dtype`` (default y's), summed over ``GRAM_CHUNK`` columns; ``centre=None`` centres the
    rows at their mean.

    Each chunk is one BLAS product in that dtype (for n ≥ ``GRAM_HALVES_FROM`` one per block
    of rows, of the lower block triangle only); adding the chunks in float64 keeps float32
    rounding at ≈ 10⁻⁸ relative for d = 10⁶ (one float32 product over all d columns: up to
    10⁻⁴, enough to reorder near-tied Krum scores), at the same cost.

    ``centre=None``, from ``UNCENTRED_FROM`` chunks and ``UNCENTRED_ROWS_FROM`` rows on: a
    chunk's rows are multiplied as they are while their mean is small next to their spread
    (``UNCENTRED_MEAN_RATIO``; the rounding then stays at the centred rows' scale), so BLAS
    reads y once and nothing is copied; the sum P of the products is centred exactly in
    float64, JPJ with J = I − 11ᵀ/n (each chunk's columns at their own mean). From the
    first chunk that fails the test on, the rows are centred before the product at the mean
    from one matrix-vector product (its float32 rounding is removed by J too). Each decision
    depends on its chunk alone, not on the blocks, so a replica of a batch (B, n, d) is
    computed as if alone. Fewer chunks or rows, or a ``centre``: every chunk is centred
    before its product (at its columns' mean, or at ``centre``). Rows are centred a block of
    chunks at a time (``GRAM_BLOCK``) into one reused buffer. A NaN/Inf in y makes at least
    one diagonal entry non-finite (NaN/Inf propagate through the mean, the products and J).
    No gradient flows through it (the rules using it only select rows).
    """
    y = y.detach()
    lead, (n, d) = y.shape[:-2], y.shape[-2:]
    dtype = y.dtype if dtype is None else dtype
    flat = y.reshape(-1, n, d)
    b = flat.shape[0]
    bounds = _row_bounds(n)
    total = math.ceil(d / GRAM_CHUNK)
    chunks = max(1, min(GRAM_BLOCK // (b * n * GRAM_CHUNK), total))
    uncentred = centre is None and total >= UNCENTRED_FROM and n >= UNCENTRED_ROWS_FROM
    g = torch.zeros(b, n, n, dtype=torch.float64, device=y.device)
    buf = None if uncentred else \
        torch.empty(b, chunks, n, min(GRAM_CHUNK, d), dtype=dtype, device=y.device)
    centred_from = [total] * b  # per replica, the chunk from which on rows are centred first
    for start in range(0, d, chunks * GRAM_CHUNK):  # blocks of chunks of coordinates
        width = min(chunks * GRAM_CHUNK, d - start)
        full, rest = divmod(width, GRAM_CHUNK)
        pieces = [(full, GRAM_CHUNK, start)] if full else []
        if uncentred and start == 0 and full > 1:  # the first chunk alone: a cheap probe
            pieces = [(1, GRAM_CHUNK, 0), (full - 1, GRAM_CHUNK, GRAM_CHUNK)]
        if rest:
            pieces.append((1, rest, start + full * GRAM_CHUNK))
        for k, c, at in pieces:  # k chunks of c columns from column ``at``
            cols = flat[..., at:at + k * c]
            if not uncentred:  # every chunk centred before its product
                out = buf[:, :k, :, :c]
                _centre_into(out, cols, None if centre is None else
                             centre.reshape(b, d)[:, at:at + k * c], exact_mean=True)
                g += _products(out, bounds).sum(dim=-3)
                continue
            first = at // GRAM_CHUNK
            _add_uncentred(g, centred_from, cols, k, c, first, bounds, dtype)
            need = [i for i in range(b) if centred_from[i] < first + k]
            if need:
                if buf is None:
                    buf = torch.empty(b, chunks, n, min(GRAM_CHUNK, d), dtype=dtype,
                                      device=y.device)
                out = buf[:len(need), :k, :, :c]
                _centre_into(out, cols if len(need) == b else cols[need], None)
                keep = [[first + j >= centred_from[i] for j in range(k)] for i in need]
                _add_kept(g, need, _products(out, bounds), keep)
    if uncentred:  # J·g·J: the mean of uncentred chunks, the rounding of the others' removed
        r = g.sum(dim=-1) / n  # (g·1)/n
        s = (r.sum(dim=-1) / n)[:, None, None]
        g = (g - (r.unsqueeze(-1) + r.unsqueeze(-2))) + s  # exactly symmetric
    return g.reshape(*lead, n, n)


def _row_bounds(n: int) -> list[int]:
    """Boundaries of the row blocks of the lower block triangle (``GRAM_HALVES_FROM``)."""
    if n < GRAM_HALVES_FROM:
        return [0, n]
    if n < 2 * GRAM_ROW_BLOCK:
        return [0, n // 2, n]
    return [*range(0, GRAM_ROW_BLOCK * (n // GRAM_ROW_BLOCK), GRAM_ROW_BLOCK), n]


def _products(v: Tensor, bounds: list[int]) -> Tensor:
    """(..., k, n, n) float64 products cᵢcᵢᵀ of the chunks v (..., k, n, c), each in v's
    dtype, from the lower block triangle of the row blocks ``bounds`` (the rest mirrored)."""
    n = v.shape[-2]
    if len(bounds) == 2:
        return torch.matmul(v, v.transpose(-1, -2)).double()
    p = torch.empty(*v.shape[:-1], n, dtype=torch.float64, device=v.device)
    for a, e in zip(bounds[:-1], bounds[1:]):
        p[..., a:e, :e] = torch.matmul(v[..., a:e, :], v[..., :e, :].transpose(-1, -2))
        p[..., :a, a:e] = p[..., a:e, :a].transpose(-1, -2)
    return p


def _add_kept(g: Tensor, rows: list[int], p: Tensor, keep: list[list[bool]]) -> None:
    """g[rows] += Σ over the chunks with ``keep`` (b × k) of the products p (b, k, n, n)."""
    if not all(map(all, keep)):
        p = torch.where(torch.tensor(keep, device=p.device)[..., None, None], p, 0)
    part = p.sum(dim=-3)
    if len(rows) == g.shape[0]:
        g += part
    else:
        g[rows] += part


def _add_uncentred(g: Tensor, centred_from: list[int], cols: Tensor, k: int, c: int,
                   first: int, bounds: list[int], dtype: torch.dtype) -> None:
    """Add to g the uncentred products of the chunks first..first+k−1 of ``cols``
    (b, n, k·c) that pass ``UNCENTRED_MEAN_RATIO`` (per replica, up to the first that fails,
    where ``centred_from`` is set)."""
    live = [i for i in range(len(centred_from)) if centred_from[i] > first]
    if not live:
        return
    sub = cols if len(live) == len(centred_from) else cols[live]
    p = _products(sub.unflatten(-1, (k, c)).movedim(-2, -3).to(dtype), bounds)
    n = p.shape[-1]
    r = p.sum(dim=-1) / n  # (b, k, n): yᵢ·m
    m2 = r.sum(dim=-1) / n  # ‖m‖²
    spread = p.diagonal(dim1=-2, dim2=-1) - 2 * r + m2.unsqueeze(-1)  # ‖yᵢ − m‖²
    ok = (m2 <= UNCENTRED_MEAN_RATIO * spread.median(dim=-1).values).tolist()  # NaN: False
    for i, passed in zip(live, ok):
        if False in passed:  # that chunk and all later ones: centred before the product
            centred_from[i] = first + passed.index(False)
    _add_kept(g, live, p, [[first + j < centred_from[i] for j in range(k)] for i in live])


def _centre_into(out: Tensor, part: Tensor, centre: Tensor | None,
                 exact_mean: bool = False) -> None:
    """out (b, k, n, c) = the columns part (b, n, k·c) minus ``centre`` (b, k·c; None: their
    mean, by one matrix-vector product, or as exactly as float32 allows with ``exact_mean``),
    chunk j of c columns into out[:, j, :, :]."""
    k, c = out.shape[-3], out.shape[-1]
    src = part.unflatten(-1, (k, c)).movedim(-2, -3)
    if centre is None and exact_mean:
        torch.sub(src, src.mean(dim=-2, keepdim=True, dtype=out.dtype), out=out)
        return
    if centre is None:
        centre = _mean_of(part, out.dtype)  # Σᵢ yᵢ/n, one matrix-vector product
    shift = centre.to(out.dtype).unflatten(-1, (k, c)).unsqueeze(-2)
    torch.sub(src, shift, out=out)


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


def _centred_sq_distances(x: Tensor, dtype: torch.dtype, unchecked: bool = False) -> Tensor:
    dist, sq = _sq_distances_around(x, None, dtype)
    if unchecked and not bool(torch.isfinite(sq).all()):  # else all rows are finite (gram)
        bad = x if x.dim() == 2 else x[~torch.isfinite(sq).all(dim=-1)]
        if not bool(finite_rows(bad).all()):
            raise NonFiniteRows
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


def pairwise_sq_distances(x: Tensor, unchecked: bool = False) -> Tensor:
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
    overflows. ``unchecked=True``: x may hold NaN/Inf, and then :class:`NonFiniteRows` is
    raised after the first Gram pass, whose squared norms are all finite only if every row
    is (otherwise, with finite rows that overflowed, the computation goes on).
    """
    dist = _centred_sq_distances(x, x.dtype, unchecked)
    if x.dtype != torch.float64:
        over = ~torch.isfinite(dist).flatten(-2).all(dim=-1)
        if x.dim() == 2 and bool(over):
            dist = _centred_sq_distances(x, torch.float64)
        elif x.dim() == 3 and bool(over.any()):
            rows = over.nonzero().squeeze(1)
            dist[rows] = _centred_sq_distances(x[rows], torch.float64)
    return dist
