"""One read of the uploads for Eqs. 4–7 on a CPU: lookahead mean, exact top-k, layer moments.

The server's cost per iteration is memory-bound: the (n, d) upload matrix does not fit in
any cache (135 MB for the Romoa MNIST CNN with n = 10), so every separate pass over it costs
about as much as the arithmetic. :func:`scan` therefore reads the matrix once, in blocks of
columns small enough to stay in cache, and gathers from each block everything that
Eqs. 4–7 need:

* the lookahead aggregate ā (the column mean, Fig. 3) of the block;
* Eq. 4 — for every row, the entries above ``hiᵢ`` (selected for sure) and the few in
  [loᵢ, hiᵢ]. ``lo`` and ``hi`` bracket the row's k-th largest magnitude τᵢ: they are
  order statistics of a fixed random sample of the row, 6 binomial standard deviations
  either side of the k-th. After the pass, τᵢ is an introselect among the bracketed few,
  and U = ∪ᵢ {magnitude ≥ τᵢ, > 0}. Where a bracket misses (probability ≈ 10⁻⁹ per row, or
  an adversarial row), U is recomputed with a full introselect of every row, so the result
  is always exact: the sample decides only the speed;
* Eqs. 5–7 — the per-layer sums Σ aᵢ·ā, Σ aᵢ, Σ aᵢ² of every row
  (:class:`fedlib.romoa.similarity.LayerMoments`).

Blocks are shared between ``torch.get_num_threads()`` threads (NumPy releases the GIL in
its loops). Every block's sums are kept apart and added in block order, so the result does
not depend on the number of threads or on scheduling. :func:`selected_sums` is the second,
optional pass for ``elementwise="cosine"`` (the Eq. 5 cosine over U needs U first).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

BLOCK = 1 << 18
"""Columns per block: a row's slice of a block (1 MB in float32) and its temporaries stay in
the L2/L3 cache while it is worked on, and the per-call overhead is amortised."""

SAMPLE = 1 << 13
"""Sample size per row used to bracket τᵢ."""

_POOL: Optional[ThreadPoolExecutor] = None
_COLS: dict[int, np.ndarray] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="romoa-scan")
    return _POOL


def _run(fn, jobs: int, workers: int) -> list:
    """[fn(0), …, fn(jobs − 1)], the jobs shared between ``workers`` threads."""
    workers = max(1, min(jobs, workers))
    if workers == 1:
        return [fn(j) for j in range(jobs)]
    return list(_pool(workers).map(fn, range(jobs)))


def _sample_columns(d: int) -> np.ndarray:
    """A fixed sorted random sample of column indices for rows of length d (reproducible)."""
    cols = _COLS.get(d)
    if cols is None:
        cols = np.sort(np.random.default_rng(d).choice(d, size=SAMPLE, replace=False))
        _COLS[d] = cols
    return cols


def _magnitude(block: np.ndarray, theta: Optional[np.ndarray], raw: bool,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """The ranked magnitude of a block of rows: the block itself (raw), |θ − x| or |x|."""
    if raw:
        return block
    if theta is not None:
        out = np.subtract(theta, block, out=out)
        return np.abs(out, out=out)
    return np.abs(block, out=out)


def _brackets(x: np.ndarray, k: int, theta: Optional[np.ndarray],
              raw: bool) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per row with lo ≤ τᵢ ≤ hi with overwhelming probability, from a sample."""
    n, d = x.shape
    cols = _sample_columns(d)
    mag = _magnitude(x[:, cols], None if theta is None else theta[cols], raw)
    s = cols.size
    p = k / d
    spread = 6.0 * math.sqrt(s * p * (1 - p)) + 8
    r_lo = int(min(s - 1, p * s + spread))              # descending ranks in the sample
    r_hi = int(max(0, p * s - spread))
    part = np.partition(mag, sorted({s - 1 - r_lo, s - 1 - r_hi}), axis=1)
    tiny = float(np.finfo(x.dtype).tiny)
    hi = np.maximum(part[:, s - 1 - r_hi], tiny)         # entries above hi are all non-zero
    lo = np.minimum(part[:, s - 1 - r_lo], hi)
    return lo, hi


@dataclass
class _Part:
    """One block's results: per-row counts above hi, bracketed entries, and sums."""

    above: np.ndarray                   # (n,) int
    band_idx: list                      # per row: column indices in [lo, hi]
    band_val: list                      # per row: their magnitudes
    moments: Optional[np.ndarray]       # (n, 3) float64: Σ x·ā, Σ x, Σ x²


def _blocks(layers: Sequence[slice]) -> list[tuple[int, int, int]]:
    """(start, stop, layer) blocks of at most BLOCK columns that do not cross layers."""
    return [(s, min(s + BLOCK, sl.stop), j) for j, sl in enumerate(layers)
            for s in range(sl.start, sl.stop, BLOCK)]


def _exact_union(x: np.ndarray, k: int, theta: Optional[np.ndarray], raw: bool,
                 tau: np.ndarray) -> np.ndarray:
    """U by a full introselect of every row (the fallback where a bracket missed)."""
    n, d = x.shape
    tiny = np.finfo(x.dtype).tiny
    union = np.zeros(d, dtype=bool)
    for i in range(n):
        mag = _magnitude(x[i], theta, raw, None if raw else np.empty(d, x.dtype))
        tau[i] = np.partition(mag, d - k)[d - k]
        union |= mag >= max(tau[i], tiny)
    return union


def scan(x: np.ndarray, k: int, theta: Optional[np.ndarray] = None, raw: bool = False,
         layers: Optional[Sequence[slice]] = None, moments: bool = False, workers: int = 1
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Eq. 4, the lookahead mean and the Eqs. 5–7 moments of an (n, d) array in one read.

    The ranked magnitudes are ``x`` itself (``raw``), |θ − xᵢ| (``theta`` given) or |xᵢ|.
    Returns τ (n,) — each row's exact k-th largest magnitude; U (d,) bool — the union of
    {magnitude ≥ τᵢ and > 0} (Eq. 4); ā (d,) — the column mean; and, with ``moments``, the
    float64 (n, L, 3) sums (Σ xᵢ·ā, Σ xᵢ, Σ xᵢ²) per layer of ``layers`` (contiguous slices
    covering 0..d; default one layer).
    """
    n, d = x.shape
    if not 1 <= k <= d:
        raise ValueError(f"k must be in [1, {d}], got {k}")
    layers = list(layers) if layers is not None else [slice(0, d)]
    blocks = _blocks(layers)
    bracketed = d > 8 * SAMPLE
    lo, hi = _brackets(x, k, theta, raw) if bracketed else (None, None)
    agg = np.empty(d, dtype=x.dtype)
    union = np.zeros(d, dtype=bool)

    def block(b: int) -> _Part:
        s, e, _ = blocks[b]
        xb = x[:, s:e]
        a = np.add.reduce(xb, axis=0, out=agg[s:e])
        a /= n
        res = _Part(np.zeros(n, dtype=np.int64), [None] * n, [None] * n,
                    np.zeros((n, 3)) if moments else None)
        if bracketed:
            mag = np.empty(e - s, dtype=x.dtype)
            above = np.empty(e - s, dtype=bool)
            ge = np.empty(e - s, dtype=bool)
            u = union[s:e]
            th = None if theta is None else theta[s:e]
        if moments:
            ones = np.ones(e - s, dtype=x.dtype)
        for i in range(n):
            row = xb[i]
            if bracketed:
                m = _magnitude(row, th, raw, mag)
                np.greater(m, hi[i], out=above)
                np.logical_or(u, above, out=u)
                res.above[i] = np.count_nonzero(above)
                np.greater_equal(m, lo[i], out=ge)
                np.logical_xor(ge, above, out=ge)          # lo ≤ m ≤ hi
                j = np.flatnonzero(ge)
                res.band_idx[i] = j + s
                res.band_val[i] = m[j]
            if moments:
                res.moments[i] = (np.dot(row, a), np.dot(row, ones), np.dot(row, row))
        return res

    parts = _run(block, len(blocks), workers)
    tau = np.empty(n, dtype=x.dtype)
    ok = bracketed
    if bracketed:
        tiny = np.finfo(x.dtype).tiny

        def finish(i: int) -> Optional[np.ndarray]:
            need = k - sum(int(p.above[i]) for p in parts)
            vals = np.concatenate([p.band_val[i] for p in parts])
            if not 0 < need <= vals.size:
                return None
            tau[i] = np.partition(vals, vals.size - need)[vals.size - need]
            idx = np.concatenate([p.band_idx[i] for p in parts])
            return idx[vals >= max(tau[i], tiny)]

        chosen = _run(finish, n, workers)
        ok = all(c is not None for c in chosen)
        if ok:
            for c in chosen:
                union[c] = True
    if not ok:
        union = _exact_union(x, k, theta, raw, tau)
    mom = None
    if moments:
        mom = np.zeros((n, len(layers), 3))
        for (_, _, j), p in zip(blocks, parts):       # block order: thread-count independent
            mom[:, j] += p.moments
    return tau, union, agg, mom


def selected_sums(x: np.ndarray, agg: np.ndarray, selected: np.ndarray,
                  workers: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    """(Σ_U xᵢ·ā (n,), Σ_U xᵢ² (n,), Σ_U ā²) over the selected columns U, float64."""
    n, d = x.shape
    starts = range(0, d, BLOCK)

    def block(s: int) -> np.ndarray:
        e = min(s + BLOCK, d)
        u = selected[s:e]
        a = agg[s:e] * u                                  # ā·1_U
        t = np.multiply(x[:, s:e], u)                     # x·1_U, (n, m)
        out = np.empty((n + 1, 2))
        for i in range(n):
            out[i] = np.dot(t[i], a), np.dot(t[i], t[i])
        out[n] = 0.0, np.dot(a, a)
        return out

    total = np.zeros((n + 1, 2))
    for p in _run(lambda b: block(starts[b]), len(starts), workers):   # block order
        total += p
    return total[:n, 0], total[:n, 1], float(total[n, 1])
