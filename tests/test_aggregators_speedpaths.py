"""The fast paths of Krum and the geometric median equal straightforward implementations.

Krum / multi-Krum: the same selected rows as a float64 reference (exact pairwise distances,
full sort), multi-Krum's mean to float rounding (rtol 1e-6 in float32). Geometric median:
equal to a plain smoothed Weiszfeld loop to float rounding (1e-5 · max|z| in float32, 1e-12
in float64); ``tol`` = 0 gives exactly the result of all iterations. The Gram matrix behind
Krum: chunks of rows near the origin multiplied uncentred are as accurate as centred ones,
a batch decides chunk by chunk as its replicas alone, and NaN/Inf rows are found from the
Gram diagonal exactly as the separate pass over the rows would find them.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fedlib.aggregators as agg
from fedlib.aggregators import distances, iterative

F64 = torch.float64


def updates(seed, n, d, offset=0.0, huge=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype) + offset
    x[0] *= huge  # possibly one huge row (the re-centred path)
    return x


def reference_krum_order(x, f):
    """Row indices by (Krum score, total distance), scores from exact float64 distances."""
    y = x.double()
    dist = torch.cdist(y, y, compute_mode="donot_use_mm_for_euclid_dist").square()
    n = x.shape[0]
    scores = dist.sort(dim=1).values[:, 1:n - f - 1].sum(dim=1)
    total = dist.sum(dim=1)
    by_total = torch.argsort(total, stable=True)
    return by_total[torch.argsort(scores[by_total], stable=True)]


def plain_weiszfeld(x, iters=10, eps=1e-6):
    """Smoothed Weiszfeld written directly: (n, d) differences every iteration."""
    z = x.mean(dim=0)
    for _ in range(iters):
        beta = 1.0 / (x - z).norm(dim=1).clamp_min(eps)
        z = (beta[:, None] * x).sum(dim=0) / beta.sum()
    return z


CASES = [(0, 10, 9000, 0.0, 1.0), (1, 40, 9000, 0.0, 1.0), (2, 100, 5000, 50.0, 1.0),
         (3, 33, 12000, 0.0, 1e4), (4, 64, 300, 10.0, 1e6), (5, 31, 4097, 0.0, 1.0)]


@pytest.mark.parametrize("seed, n, d, offset, huge", CASES)
def test_krum_and_multi_krum_select_what_the_reference_selects(seed, n, d, offset, huge):
    x = updates(seed, n, d, offset, huge)
    f = max(1, n // 5)
    order = reference_krum_order(x, f)
    out, w = agg.selection.krum_rule(f)(x)
    assert torch.equal(out, x[order[0]]) and int(w.argmax()) == int(order[0])
    m = n - f
    out, w = agg.selection.multi_krum_rule(f)(x)
    assert set(w.nonzero().squeeze(1).tolist()) == set(order[:m].tolist())
    assert torch.allclose(out, x[order[:m]].mean(dim=0), rtol=1e-6,
                          atol=1e-6 * float(x.abs().max()))


@pytest.mark.parametrize("n", [10, 31, 32, 65])
@pytest.mark.parametrize("chunks_per_block", [2, None])
def test_gram_centred_chunk_by_chunk_equals_the_float64_centred_gram(n, chunks_per_block,
                                                                     monkeypatch):
    monkeypatch.setattr(distances, "GRAM_CHUNK", 700)  # several chunks and a ragged last one
    if chunks_per_block:  # blocks of 2 chunks (of 1 for the batch of 3 below): several blocks
        monkeypatch.setattr(distances, "GRAM_BLOCK", n * 700 * chunks_per_block)
    x = updates(n, n, 3000, offset=100.0)
    y = x.double() - x.double().mean(dim=0)
    exact = y @ y.T
    got = distances.gram(x)
    assert got.dtype == F64
    if n >= distances.GRAM_HALVES_FROM:  # the lower triangle is mirrored: exactly symmetric
        assert torch.equal(got, got.T)
    assert (got - exact).abs().max() <= 1e-6 * exact.abs().max()
    batch = torch.stack([x, 2 * x, -x])
    for b, scale in enumerate([1.0, 4.0, 1.0]):
        assert torch.allclose(distances.gram(batch)[b], scale * got, rtol=1e-6,
                              atol=1e-6 * scale * float(got.abs().max()))


def test_the_half_products_equal_the_full_product(monkeypatch):
    x = updates(7, 50, 10000, offset=3.0)
    halves = distances.pairwise_sq_distances(x)
    monkeypatch.setattr(distances, "GRAM_HALVES_FROM", 10**9)
    full = distances.pairwise_sq_distances(x)
    assert torch.allclose(halves, full, rtol=1e-6, atol=1e-6 * float(full.median()))


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (F64, 1e-12)])
@pytest.mark.parametrize("seed, n, d, huge", [(0, 10, 20000, 1.0), (1, 40, 3000, 1.0),
                                             (2, 25, 40000, 1e3)])
def test_geometric_median_equals_a_plain_weiszfeld_loop(seed, n, d, huge, dtype, rtol):
    x = updates(seed, n, d, huge=huge, dtype=dtype) * 1e-2
    ref = plain_weiszfeld(x)
    got = agg.geometric_median(x)
    assert torch.allclose(got, ref, rtol=0, atol=rtol * float(ref.abs().max()))


def test_blockwise_distances_are_exact_in_every_block(monkeypatch):
    monkeypatch.setattr(iterative, "DISTANCE_BLOCK", 12 * 64)  # 16 blocks, the last ragged
    x = updates(3, 12, 1000, offset=5.0)
    z = x[4] + 1e-3
    exact = (x.double() - z.double()).norm(dim=1)
    got = iterative.blockwise_distances_to(x, z)
    assert got.dtype == x.dtype and torch.allclose(got.double(), exact, rtol=1e-6)
    batch = torch.stack([x, x.flip(0)])
    monkeypatch.setattr(iterative, "DISTANCE_BLOCK", 2 * 12 * 64)
    both = iterative.blockwise_distances_to(batch, torch.stack([z, z]))
    assert torch.equal(both[0], got) and torch.equal(both[1], got.flip(0))
    big = torch.full((2, 3), 3e38)
    big[1] *= -1  # the difference overflows float32: +inf, not NaN
    assert torch.isinf(iterative.blockwise_distances_to(big, torch.zeros(3))).all()


def test_float32_geometric_median_is_as_accurate_as_float32_allows():
    # the former distance pass (one float32 accumulator per row over d = 10⁵) put the float32
    # result 2.8e-6 · max|z| away from the float64 one
    x = updates(4, 10, 100_000) * 1e-2
    x[0] *= 1e4
    exact = agg.geometric_median(x.double())
    err = (agg.geometric_median(x).double() - exact).abs().max() / exact.abs().max()
    assert err < 1e-6


def count_steps(monkeypatch):
    calls = []
    inner = iterative.blockwise_distances_to
    monkeypatch.setattr(iterative, "blockwise_distances_to",
                        lambda *a: calls.append(1) or inner(*a))
    return calls


def test_tol_zero_stops_at_a_fixed_point_with_the_result_of_every_step(monkeypatch):
    x = updates(11, 30, 3000)  # float32 Weiszfeld reaches an exact fixed point in < 15 steps
    calls = count_steps(monkeypatch)
    early, w_early = iterative.geometric_median_rule(iters=15)(x)
    steps = len(calls)
    monkeypatch.setattr(iterative, "weiszfeld_converged",
                        lambda z_new, z, tol: torch.zeros(z.shape[:-1], dtype=torch.bool))
    every, w_every = iterative.geometric_median_rule(iters=15)(x)
    assert steps < 15 and len(calls) == steps + 15
    assert torch.equal(early, every) and torch.equal(w_early, w_every)


def test_a_positive_tol_stops_early_within_the_tolerance(monkeypatch):
    x = updates(12, 20, 2000, dtype=F64)
    calls = count_steps(monkeypatch)
    loose = agg.geometric_median(x, iters=50, tol=1e-4)
    steps = len(calls)
    tight = agg.geometric_median(x, iters=50)
    assert steps < len(calls) - steps
    assert (loose - tight).abs().max() <= 1e-3 * tight.abs().max()
    assert agg.get("geometric_median", tol=1e-4)(x).equal(loose)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-4), (F64, 1e-10)])
def test_batched_early_stop_equals_separate_calls(dtype, rtol):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(4, 15, 500, generator=g, dtype=dtype)
    x[1, :3] *= 100.0  # replicas converge after different numbers of steps
    x[2] *= 1e-3
    for tol in (0.0, 1e-3):
        out = agg.geometric_median(x, iters=30, tol=tol)
        alone = torch.stack([agg.geometric_median(x[b], iters=30, tol=tol) for b in range(4)])
        scale = alone.abs().amax(dim=-1, keepdim=True)
        assert ((out - alone).abs() <= rtol * scale).all()


@pytest.mark.parametrize("tol", [-1e-3, float("inf"), float("nan"), True, "1e-3", None])
def test_bad_tol_raises_value_error(tol):
    with pytest.raises(ValueError, match="tol"):
        agg.geometric_median(torch.randn(5, 3), tol=tol)
    with pytest.raises(ValueError, match="tol"):
        agg.get("geometric_median", tol=tol)


def test_gradients_flow_through_the_geometric_median_and_krum():
    # attacks may differentiate through the server's rule: the buffered passes must not break it
    x = updates(14, 9, 300, dtype=F64).requires_grad_(True)
    agg.geometric_median(x).pow(2).sum().backward()
    y = x.detach().clone().requires_grad_(True)
    plain_weiszfeld(y).pow(2).sum().backward()
    assert torch.allclose(x.grad, y.grad, rtol=1e-8, atol=1e-12)
    x.grad = None
    agg.krum(x, 2).sum().backward()
    assert x.grad.abs().sum(dim=1).count_nonzero() == 1  # the selected row only


# ------------------------------------------------------------- Gram: uncentred chunks, NaN/Inf


def small_chunks(monkeypatch, chunk=500, chunks_per_block=None, n=None):
    """Several Gram chunks at test sizes (and blocks of ``chunks_per_block`` chunks of n rows)."""
    monkeypatch.setattr(distances, "GRAM_CHUNK", chunk)
    if chunks_per_block:
        monkeypatch.setattr(distances, "GRAM_BLOCK", n * chunk * chunks_per_block)


def spy(monkeypatch, module, name):
    calls = []
    inner = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(a) or inner(*a, **k))
    return calls


@pytest.mark.parametrize("n", [40, 100])  # |mean|² ≈ spread / n for n random rows
@pytest.mark.parametrize("offset, centred", [(0.0, False), (100.0, True)])
def test_rows_near_the_origin_skip_the_centring_pass_as_accurately(n, offset, centred,
                                                                   monkeypatch):
    # mean small next to the spread: each chunk's product of the rows as they are, centred
    # in float64 (no pass over the rows); far from the origin: centred before the product
    small_chunks(monkeypatch)
    x = updates(20 + n, n, 3100, offset=offset)  # 6 full chunks and a ragged one
    passes = spy(monkeypatch, distances, "_centre_into")
    got = distances.gram(x)
    assert bool(passes) == centred
    y = x.double() - x.double().mean(dim=0)
    exact = y @ y.T
    assert torch.equal(got, got.T)
    assert (got - exact).abs().max() <= 1e-6 * exact.abs().max()
    # the same bound as the rows centred first (every chunk fails the mean test)
    monkeypatch.setattr(distances, "UNCENTRED_MEAN_RATIO", -1.0)
    first = distances.gram(x)
    assert (first - exact).abs().max() <= 1e-6 * exact.abs().max()


@pytest.mark.parametrize("chunks_per_block", [1, 3, None])
def test_chunks_after_the_first_far_one_are_centred_and_a_batch_decides_as_alone(
        chunks_per_block, monkeypatch):
    # replica 0 leaves the origin from column 1700 on (chunk 3 of 500 columns): chunks 0–2
    # uncentred, 3.. centred; replica 1 stays near the origin; replica 2 is far throughout.
    # Each replica's Gram matrix must equal its own call's exactly, whatever the blocks.
    n, d = 40, 3600
    small_chunks(monkeypatch, 500, chunks_per_block, 3 * n)
    x = torch.stack([updates(30, n, d), updates(31, n, d), updates(32, n, d, offset=50.0)])
    x[0, :, 1700:] += 30.0
    together = distances.gram(x)
    for b in range(3):
        alone = distances.gram(x[b])
        assert torch.equal(together[b], alone), b
        y = x[b].double() - x[b].double().mean(dim=0)
        exact = y @ y.T
        assert (alone - exact).abs().max() <= 1e-6 * exact.abs().max()
    passes = spy(monkeypatch, distances, "_centre_into")
    distances.gram(x[1])
    assert not passes
    distances.gram(x[0])
    assert passes


def test_row_blocks_of_32_equal_the_full_product(monkeypatch):
    x = updates(8, 100, 9000, offset=3.0)
    assert distances._row_bounds(100) == [0, 32, 64, 100]
    blocks = distances.pairwise_sq_distances(x)
    monkeypatch.setattr(distances, "GRAM_HALVES_FROM", 10**9)
    full = distances.pairwise_sq_distances(x)
    assert torch.allclose(blocks, full, rtol=1e-6, atol=1e-6 * float(full.median()))


NONFINITE = {  # (row, column, value) entries of one replica
    "nan": [(3, 10, math.nan)],
    "inf": [(0, 1499, math.inf)],
    "-inf": [(39, 3099, -math.inf)],  # in the ragged last chunk
    "inf and -inf in one column": [(5, 777, math.inf), (6, 777, -math.inf)],
    "two rows": [(1, 2, math.nan), (30, 2900, math.inf)],
}


@pytest.mark.parametrize("case", sorted(NONFINITE))
@pytest.mark.parametrize("offset", [0.0, 100.0])  # chunk products uncentred / centred first
@pytest.mark.parametrize("name", ["krum", "multi_krum"])
def test_nonfinite_rows_found_without_the_separate_pass(case, offset, name, monkeypatch):
    # Krum runs on the unchecked rows; a NaN/Inf makes its Gram diagonal non-finite, and
    # only then are the rows checked. If it missed one, no warning, another result.
    small_chunks(monkeypatch)
    x = updates(40, 40, 3100, offset=offset)
    bad = x.clone()
    for i, j, v in NONFINITE[case]:
        bad[i, j] = v
    rows = sorted({i for i, _, _ in NONFINITE[case]})
    keep = [i for i in range(40) if i not in rows]
    rule = {"krum": agg.selection.krum_rule(3), "multi_krum": agg.selection.multi_krum_rule(3)}
    with pytest.warns(RuntimeWarning, match=f"excluded {len(rows)} of 40"):
        out, w = rule[name](bad)
    ref, w_ref = rule[name](x[keep])
    assert torch.equal(out, ref) and torch.equal(w[keep], w_ref) and not w[rows].any()
    batch = torch.stack([x, bad, x.flip(0)])
    with pytest.warns(RuntimeWarning, match=f"excluded {len(rows)} of 40.*replica 1"):
        out_b, w_b = rule[name](batch)
    assert torch.equal(out_b[1], out) and torch.equal(w_b[1], w)


def test_clean_rows_skip_the_separate_finiteness_pass(monkeypatch):
    from fedlib.aggregators import _checks
    x = updates(41, 30, 9000)
    checked = []
    for module in (_checks, distances):
        inner = module.finite_rows
        monkeypatch.setattr(module, "finite_rows",
                            lambda u, inner=inner: checked.append(tuple(u.shape)) or inner(u))
    agg.krum(x, 3)
    agg.multi_krum(x, 3)
    agg.krum(torch.stack([x, x.flip(0)]), 3)
    assert checked == [(1, 9000), (1, 9000), (2, 9000)]  # the aggregates only, not the rows


def test_huge_finite_rows_are_kept_without_a_warning(monkeypatch):
    small_chunks(monkeypatch)
    x = updates(43, 40, 3100)
    x[:2] = 1e30  # float32 squares overflow: the rows are checked (finite), then float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert agg.krum(x, 2).abs().max() < 10  # an honest row is chosen
        dist = distances.pairwise_sq_distances(x, unchecked=True)
    exact = torch.cdist(x[2:].double(), x[2:].double(),
                        compute_mode="donot_use_mm_for_euclid_dist").square()
    assert torch.isfinite(dist).all() and torch.allclose(dist[2:, 2:], exact, rtol=1e-6)


@pytest.mark.parametrize("n", [10, 70])  # centred first / uncentred, row blocks 0–31, 32–69
@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_any_nonfinite_entry_makes_the_gram_diagonal_nonfinite(n, offset, value, monkeypatch):
    small_chunks(monkeypatch)
    x = updates(42, n, 2200, offset=offset)
    centre = x[:5].mean(dim=0)
    for j in (0, 499, 500, 1800, 2199):  # first/last column of chunks, the ragged one
        for i in sorted({0, 5, min(31, n - 1), min(32, n - 1), n - 1}):
            y = x.clone()
            y[i, j] = value
            for c in (None, centre):
                assert not torch.isfinite(distances.gram(y, c).diagonal()).all(), (i, j)
