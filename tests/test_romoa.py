"""Romoa (Mao et al. 2021): every equation on a hand case, the fast aggregator against a
slow per-coordinate reference, and the behaviours the paper claims."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from fedlib.context import RoundContext
from fedlib.flat import ParamSpec
from fedlib.romoa import (Romoa, cluster, elementwise_cosine, estimate_bandwidth,
                          generating_function, jain_index, layer_cosine_of, layer_moments,
                          layer_pearson_of, lookahead_selection, mean_shift, parameter_selection,
                          representative,
                          sanitized_aggregation, sanitizing_factor, selected_cosine,
                          selection_threshold, sign_pattern_table)
from fedlib.romoa import scan
from fedlib.romoa import similarity as sim

# --------------------------------------------------------------------------- fixtures


def small_spec():
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    return ParamSpec.of(net)   # layers: 0 (6·5 + 5 = 35 params), 2 (5·3 + 3 = 18): d = 53


def ctx_for(spec, theta, t=0, sync=True, ids=None):
    return RoundContext(round=t, theta=theta, spec=spec, lr=0.1, sync=sync, client_ids=ids)


def honest_round(g, n, noise, gen):
    return g + noise * torch.randn(n, g.numel(), generator=gen, dtype=g.dtype)


# ------------------------------------------------------------------- Eq. 4 selection


def test_eq4_selection_union_of_each_participants_top_ratio():
    mag = torch.tensor([[5.0, 1.0, 0.0, 4.0, 0.5, 0.0],
                        [0.1, 0.2, 9.0, 0.3, 8.0, 0.0],
                        [0.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    # ratio 1/3 of d = 6 → k = 2 per participant: {0, 3} ∪ {2, 4} ∪ {5} (row 3 has one non-zero)
    u = parameter_selection(mag, 1 / 3)
    assert u.tolist() == [True, False, True, True, True, True]
    assert selection_threshold(mag, 1 / 3).tolist() == [4.0, 8.0, 0.0]
    assert sim.selection_count(6, 1 / 3) == 2 and sim.selection_count(10, 1e-9) == 1


def test_eq4_ties_at_threshold_are_all_selected():
    mag = torch.tensor([[2.0, 2.0, 2.0, 1.0]])
    assert parameter_selection(mag, 0.25).tolist() == [True, True, True, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eq4_fast_selection_is_exact_against_topk(dtype, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    mag = torch.randn(4, 70_000, generator=gen, dtype=dtype).abs()   # > 8 × sample: bracketed path
    mag[1, :40_000] = 0.0                                              # many exact zeros
    mag[2, 5:9] = mag[2].max()                                         # ties at the top
    for ratio in (0.1, 0.25, 0.61):
        k = sim.selection_count(70_000, ratio)
        ref_tau = torch.topk(mag, k, dim=1).values[:, -1]
        ref_u = ((mag >= ref_tau[:, None]) & (mag > 0)).any(0)
        assert torch.equal(selection_threshold(mag, ratio), ref_tau)
        assert torch.equal(parameter_selection(mag, ratio), ref_u)
        monkeypatch.setattr(sim, "NUMPY_SELECTION", False)            # the torch.topk path
        assert torch.equal(parameter_selection(mag, ratio), ref_u)
        monkeypatch.setattr(sim, "NUMPY_SELECTION", True)


@pytest.mark.parametrize("threads", [1, 2])
def test_eq4_lookahead_selection_from_uploads(threads, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    delta = torch.randn(5, 80_000, generator=gen)
    theta = torch.randn(80_000, generator=gen)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    for th, mag in ((theta, (theta - delta).abs()), (None, delta.abs())):
        ref = parameter_selection(mag, 0.2)
        assert torch.equal(lookahead_selection(delta, 0.2, th), ref)
        monkeypatch.setattr(sim, "NUMPY_SELECTION", False)
        assert torch.equal(lookahead_selection(delta, 0.2, th), ref)
        monkeypatch.setattr(sim, "NUMPY_SELECTION", True)


@pytest.mark.parametrize("mode", ["raw", "theta", "abs"])
def test_blocked_scan_matches_the_separate_computations(mode, monkeypatch):
    monkeypatch.setattr(scan, "SAMPLE", 128)          # d > 8 × SAMPLE: the bracketed path
    monkeypatch.setattr(scan, "BLOCK", 300)           # several blocks per layer
    gen = torch.Generator().manual_seed(7)
    n, d = 5, 3001
    x = torch.randn(n, d, generator=gen)
    x[2, :1500] = 0.0                                 # exact zeros are never selected
    theta = torch.randn(d, generator=gen)
    raw = mode == "raw"
    if raw:
        x = x.abs()
    th = theta if mode == "theta" else None
    mag = x if raw else ((theta - x).abs() if th is not None else x.abs())
    layers = [slice(0, 700), slice(700, 2900), slice(2900, d)]
    k = sim.selection_count(d, 0.2)
    ref_tau = torch.topk(mag, k, dim=1).values[:, -1]
    ref_u = ((mag >= ref_tau[:, None]) & (mag > 0)).any(0)
    ref_agg = x.mean(0)
    ref_m = layer_moments(x.double(), ref_agg.double(), layers)
    results = []
    for workers in (1, 2):
        tau, u, agg, mom = scan.scan(x.numpy(), k, None if th is None else th.numpy(), raw,
                                     layers, moments=True, workers=workers)
        assert torch.equal(torch.from_numpy(tau), ref_tau)
        assert torch.equal(torch.from_numpy(u), ref_u)
        torch.testing.assert_close(torch.from_numpy(agg), ref_agg)
        for j, key in enumerate(("dot", "sum", "sq")):
            torch.testing.assert_close(torch.from_numpy(mom[..., j]), getattr(ref_m, key),
                                       rtol=1e-5, atol=1e-5)
        results.append((tau, u, agg, mom))
    for a, b in zip(*results):                        # bit-identical whatever the threads
        assert np.array_equal(a, b)


def test_blocked_scan_is_exact_when_a_bracket_misses(monkeypatch):
    monkeypatch.setattr(scan, "SAMPLE", 64)
    monkeypatch.setattr(scan, "BLOCK", 100)
    gen = torch.Generator().manual_seed(8)
    mag = torch.randn(4, 1000, generator=gen).abs()
    k = sim.selection_count(1000, 0.1)
    ref_tau = torch.topk(mag, k, dim=1).values[:, -1]
    ref_u = ((mag >= ref_tau[:, None]) & (mag > 0)).any(0)
    for lo, hi in ((0.0, 1e-3), (50.0, 60.0)):       # too many above hi / too few in the band
        monkeypatch.setattr(scan, "_brackets", lambda *a, lo=lo, hi=hi: (np.full(4, lo),
                                                                         np.full(4, hi)))
        tau, u, _, _ = scan.scan(mag.numpy(), k, raw=True, workers=2)
        assert torch.equal(torch.from_numpy(tau), ref_tau)
        assert torch.equal(torch.from_numpy(u), ref_u)


def test_selected_sums_and_lookahead_scan_match_the_moments():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 90_000, generator=gen)
    layers = [slice(0, 10_000), slice(10_000, 90_000)]
    agg, sel, m = sim.lookahead_scan(x, layers, 0.25, with_selected=True)
    ref = layer_moments(x, x.mean(0), layers, selected=lookahead_selection(x, 0.25))
    assert torch.equal(sel, lookahead_selection(x, 0.25))
    torch.testing.assert_close(agg, x.mean(0))
    for key in ("dot", "sum", "sq", "agg_sum", "agg_sq", "sel_dot", "sel_sq", "agg_sel_sq"):
        torch.testing.assert_close(getattr(m, key), getattr(ref, key), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------- Eqs. 5–7 similarity


def test_eq5_literal_is_a_product_of_signs():
    a = torch.tensor([[2.0, -3.0, 0.0, 1e-30], [-1.0, -1.0, 4.0, 1.0]])
    b = torch.tensor([1.0, 1.0, 1.0, -2.0])
    assert elementwise_cosine(a, b).tolist() == [[1.0, -1.0, 0.0, -1.0], [-1.0, -1.0, 1.0, -1.0]]


def test_eq5_calibrated_is_the_cosine_over_the_selected_set():
    paths = torch.tensor([[3.0, 4.0, 100.0], [1.0, 0.0, -7.0]])
    agg = torch.tensor([4.0, 3.0, 1.0])
    sel = torch.tensor([True, True, False])
    m = layer_moments(paths, agg, [slice(0, 3)], selected=sel)
    # (3·4 + 4·3)/(5·5) = 0.96 and (1·4)/(1·5) = 0.8: column 2 is not in U
    torch.testing.assert_close(selected_cosine(m), torch.tensor([0.96, 0.8], dtype=torch.float64))


def test_eq6_eq7_layerwise_cosine_and_pearson_by_hand():
    layers = [slice(0, 2), slice(2, 5)]
    a = torch.tensor([[1.0, 0.0, 1.0, 2.0, 2.0]])
    b = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0])
    cos = layer_cosine_of(a, b, layers)
    torch.testing.assert_close(cos, torch.tensor([[1 / math.sqrt(2), 1 / 3]], dtype=torch.float64))
    # printed Eq. 7 on layer 2: (1/3)/(std[1,2,2]·std[2,0,0]) = (1/3)/(√(2/9)·√(8/9)) = 0.75 …
    printed = layer_pearson_of(a, b, layers, centered=False)
    assert printed[0, 1].item() == pytest.approx(0.75)
    # … although the two vectors are perfectly anti-correlated: Pearson's r = −1
    centered = layer_pearson_of(a, b, layers, centered=True)
    assert centered[0, 1].item() == pytest.approx(-1.0)
    # layer 1 of a: [1, 0] vs [1, 1] has std(b) = 0 → defined as 0
    assert printed[0, 0].item() == 0.0 and centered[0, 0].item() == 0.0


def test_eq7_printed_scale_is_one_over_the_stds():
    gen = torch.Generator().manual_seed(0)
    a = 1e-3 * torch.randn(3, 400, generator=gen, dtype=torch.float64)
    b = a.mean(0)
    printed = layer_pearson_of(a, b, [slice(0, 400)], centered=False)
    centered = layer_pearson_of(a, b, [slice(0, 400)], centered=True)
    assert printed.abs().min() > 1e4 and centered.abs().max() <= 1.0
    np_r = [np.corrcoef(a[i].numpy(), b.numpy())[0, 1] for i in range(3)]
    torch.testing.assert_close(centered[:, 0], torch.tensor(np_r, dtype=torch.float64))


# ------------------------------------------------------------------------ mean shift


def test_bandwidth_rule_by_hand():
    # q = max(2, ⌊0.3·3⌋) = 2: each point's nearest other point: 1, 1, 2 → mean 4/3
    h = estimate_bandwidth(torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64))
    assert h.item() == pytest.approx(4 / 3)
    # identical values: the floor, so that they still form one cluster
    assert 0 < estimate_bandwidth(torch.zeros(1, 5, dtype=torch.float64)).item() < 1e-5
    # robust rule: at least 3 × 1.4826 × MAD around the median: values 0, 1, 2, 3, 100 →
    # median 2, |x − 2| = 2, 1, 0, 1, 98 → MAD 1 → 4.4478 (the quantile rule gives 20.6)
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 100.0], [0.0, 1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(estimate_bandwidth(x, rule="robust")[1],
                               torch.tensor(3 * 1.4826, dtype=torch.float64))
    assert estimate_bandwidth(x, rule="robust")[0] == estimate_bandwidth(x)[0]
    with pytest.raises(ValueError):
        estimate_bandwidth(x, rule="silverman")


def test_mean_shift_modes_and_majority_centroid_by_hand():
    x = torch.tensor([[0.0, 0.1, 0.2, 5.0]], dtype=torch.float64)
    modes = mean_shift(x, torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(modes, torch.tensor([[0.1, 0.1, 0.1, 5.0]], dtype=torch.float64))
    res = cluster(x, bandwidth=0.5)
    assert res.centroid.item() == pytest.approx(0.1)
    # MAD around the centroid: deviations 0.1, 0, 0.1, 4.9 → lower median 0.1
    assert res.scale.item() == pytest.approx(1.4826 * 0.1)
    g = cluster(x, bandwidth=0.5, kernel="gaussian")
    assert g.centroid.item() == pytest.approx(0.1, abs=1e-6)


def test_majority_tie_goes_to_the_larger_mode():
    x = torch.tensor([[-1.0, -1.0, 1.0, 1.0]], dtype=torch.float64)
    assert cluster(x).centroid.item() == 1.0


def test_sign_table_equals_mean_shift_of_the_expanded_values():
    n = 7
    table = sign_pattern_table(n)
    for plus in range(n + 1):
        for minus in range(n + 1 - plus):
            vals = torch.tensor([[-1.0] * minus + [0.0] * (n - plus - minus) + [1.0] * plus],
                                dtype=torch.float64)
            ref = cluster(vals)
            p = plus * (n + 1) + minus
            assert table.centroid[p].item() == pytest.approx(ref.centroid.item())
            assert table.scale[p].item() == pytest.approx(ref.scale.item())
            assert table.bandwidth[p].item() == pytest.approx(ref.bandwidth.item())
            for v, mode in zip(vals[0].tolist(), ref.modes[0].tolist()):
                assert table.own[p, int(v) + 1].item() == pytest.approx(mode)


# ----------------------------------------------------------------- Eqs. 8–11, Alg. 2


def test_eq8_10_generating_functions_by_hand():
    m = torch.tensor([0.5, 0.45, -0.5], dtype=torch.float64)
    c = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(generating_function(m, c),
                               torch.tensor([0.0, -0.05, -1.0], dtype=torch.float64))
    # cluster penalty: members of the majority cluster 0, the others −(|m − c|/h − 1)⁺
    member = torch.tensor([True, True, False])
    h = torch.tensor(0.25, dtype=torch.float64)
    torch.testing.assert_close(generating_function(m, c, "cluster_penalty", member=member,
                                                   bandwidth=h),
                               torch.tensor([0.0, 0.0, -3.0], dtype=torch.float64))
    s = torch.tensor(0.05, dtype=torch.float64)
    # standardized: (|m − c| − 2s)⁺/s = (0, 0, 0.9)/0.05
    torch.testing.assert_close(generating_function(m, c, "standardized", scale=s, tolerance=2.0),
                               torch.tensor([0.0, 0.0, -18.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        generating_function(m, c, "standardized")
    with pytest.raises(ValueError):
        generating_function(m, c, "cluster_penalty", member=member)
    with pytest.raises(ValueError):
        generating_function(m, c, "quadratic", scale=s)


def test_eq11_minimum_softmax_and_momentum_by_hand():
    f = representative(torch.tensor([[0.0], [-2.0]]), torch.tensor([[1.0], [math.log(1 / 3)]]),
                       torch.tensor([[0.5], [0.0]]))
    torch.testing.assert_close(f, torch.tensor([[0.0], [-2.0]]))
    g = torch.tensor([[0.0], [math.log(1 / 3)]])             # softmax → (0.75, 0.25)
    F = sanitizing_factor(g, torch.tensor([[0.5], [0.5]]), beta=0.5)
    torch.testing.assert_close(F, torch.tensor([[0.625], [0.375]]))


def test_algorithm2_sanitized_aggregation_by_hand():
    F = torch.tensor([[0.25, 0.5], [0.75, 0.5]])
    delta = torch.tensor([[4.0, 2.0], [0.0, 6.0]])
    torch.testing.assert_close(sanitized_aggregation(delta, F), torch.tensor([1.0, 4.0]))


def test_jain_index():
    assert jain_index(torch.ones(5)) == pytest.approx(1.0)
    assert jain_index(torch.tensor([1.0, 0, 0, 0])) == pytest.approx(0.25)
    assert math.isnan(jain_index(torch.zeros(3)))


# ------------------------------------------- the aggregator vs a per-coordinate reference


def reference_factors(x, theta, layers, F_prev, opts, ratio, beta=0.5, tolerance=2.0,
                      bandwidth="auto"):
    """Romoa, one iteration, straight from the paper: every measurement expanded to (n, d)
    and mean shift run separately for every parameter across the participants."""
    x, theta = x.double(), theta.double()
    n, d = x.shape
    agg = x.mean(0)
    mag = (theta - x).abs() if opts["selection"] == "parameter" else x.abs()
    k = sim.selection_count(d, ratio)
    tau = torch.topk(mag, k, dim=1).values[:, -1:]
    U = ((mag >= tau) & (mag > 0)).any(0)
    lay = torch.zeros(d, dtype=torch.long)
    l_cos = torch.zeros(n, len(layers), dtype=torch.float64)
    l_pear = torch.zeros_like(l_cos)
    for j, sl in enumerate(layers):
        lay[sl] = j
        a, b = x[:, sl], agg[sl]
        l_cos[:, j] = (a @ b) / (a.norm(dim=1) * b.norm())
        if opts["pearson"] == "printed":
            l_pear[:, j] = l_cos[:, j] / (a.std(dim=1, unbiased=False) * b.std(unbiased=False))
        else:
            l_pear[:, j] = torch.tensor([np.corrcoef(a[i].numpy(), b.numpy())[0, 1]
                                         for i in range(n)])

    def per_parameter(values):          # (n, m) → f (n, m), one mean shift per column
        res = cluster(values.T.contiguous(), bandwidth, opts["kernel"])
        c = res.centroid[None, :] if opts["centroid"] == "majority" else res.modes.T
        member = (res.modes.T - res.centroid[None, :]).abs() <= res.bandwidth[None, :]
        return generating_function(values, c, opts["generating"], scale=res.scale[None, :],
                                   tolerance=tolerance, member=member,
                                   bandwidth=res.bandwidth[None, :])

    f_lc = per_parameter(l_cos[:, lay])
    f_lp = per_parameter(l_pear[:, lay])
    f_s = torch.zeros(n, d, dtype=torch.float64)
    if opts["elementwise"] == "sign":
        f_s[:, U] = per_parameter(torch.sign(x[:, U]) * torch.sign(agg[U]))
    else:
        a, b = x[:, U], agg[U]
        s = (a @ b) / (a.norm(dim=1) * b.norm())
        f_s[:, U] = per_parameter(s[:, None]).expand(n, int(U.sum()))
    g = representative(f_s, f_lc, f_lp)
    return sanitizing_factor(g, F_prev.double(), beta), U


COMBOS = [
    ("literal", {}),
    ("calibrated", {}),
    ("literal", {"centroid": "own"}),
    ("literal", {"generating": "standardized"}),
    ("literal", {"generating": "cluster_penalty"}),
    ("calibrated", {"generating": "standardized", "kernel": "gaussian", "bandwidth": 0.3}),
    ("calibrated", {"bandwidth": "auto"}),
    ("calibrated", {"selection": "parameter", "pearson": "printed", "centroid": "own"}),
]


@pytest.mark.parametrize("reading,extra,scale", [(r, e, 1.0) for r, e in COMBOS]
                         + [("literal", {}, 1e-4)])     # tiny paths: Eq. 7 printed ≈ 1e8
def test_aggregator_matches_the_per_parameter_reference(reading, extra, scale):
    spec = small_spec()
    layers = [sl for _, sl in spec.layers]
    gen = torch.Generator().manual_seed(3)
    n, d = 6, spec.dim
    theta = 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
    g = 0.1 * scale * torch.randn(d, generator=gen, dtype=torch.float64)
    agg = Romoa(reading, **extra)
    opts = agg.options
    F = torch.full((n, d), 1 / n, dtype=torch.float64)
    for t in range(3):
        x = honest_round(g, n, 0.1 * scale, gen)
        x[0] *= -1.5
        x[1, :7] = 0.0                                  # exact zeros: sign 0, never selected
        agg.observe(x, ctx_for(spec, theta, t, sync=False))
        F, U = reference_factors(x, theta, layers, F, opts, 1 / n, bandwidth=agg.bandwidth)
        torch.testing.assert_close(agg.factors, F, rtol=1e-6, atol=1e-9)
        assert agg.report()["selected_fraction"] == pytest.approx(U.double().mean().item())


@pytest.mark.parametrize("reading", ["literal", "calibrated"])
def test_aggregator_matches_the_reference_on_the_bracketed_blocked_path(reading, monkeypatch):
    monkeypatch.setattr(scan, "SAMPLE", 64)          # d = 1,540 > 8 × 64: bracketed
    monkeypatch.setattr(scan, "BLOCK", 200)          # several blocks per layer
    net = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.ReLU(), torch.nn.Linear(30, 10))
    spec = ParamSpec.of(net)
    layers = [sl for _, sl in spec.layers]
    gen = torch.Generator().manual_seed(5)
    n, d = 6, spec.dim
    theta = 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
    g = 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)
    agg = Romoa(reading)
    F = torch.full((n, d), 1 / n, dtype=torch.float64)
    for t in range(2):
        x = honest_round(g, n, 0.1, gen)
        x[0] *= -1.5
        agg.observe(x, ctx_for(spec, theta, t, sync=False))
        F, U = reference_factors(x, theta, layers, F, agg.options, 1 / n, bandwidth=agg.bandwidth)
        torch.testing.assert_close(agg.factors, F, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------- behaviour claims


@pytest.mark.parametrize("reading", ["literal", "calibrated"])
def test_factor_columns_sum_to_one_per_parameter(reading):
    spec = small_spec()
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(spec.dim, generator=gen)
    agg = Romoa(reading)
    g = torch.randn(spec.dim, generator=gen)
    for t in range(8):
        x = honest_round(g, 10, 0.5, gen)
        x[2] = 5 * torch.randn(spec.dim, generator=gen)
        ctx = ctx_for(spec, theta, t, sync=(t + 1) % 4 == 0)
        agg(x, ctx) if ctx.sync else agg.observe(x, ctx)
        torch.testing.assert_close(agg.factors.sum(0), torch.ones(spec.dim))
        assert (agg.factors >= 0).all()
        assert agg.weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("reading", ["literal", "calibrated"])
def test_identical_participants_give_the_mean(reading):
    spec = small_spec()
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(spec.dim, generator=gen)
    agg = Romoa(reading)
    for t in range(5):
        row = torch.randn(spec.dim, generator=gen)
        x = row.expand(7, -1).clone()
        out = agg(x, ctx_for(spec, theta, t))
        torch.testing.assert_close(out, x.mean(0))
        torch.testing.assert_close(agg.weights, torch.full((7,), 1 / 7))


@pytest.mark.parametrize("reading,scale", [("literal", 1.0), ("calibrated", 1.0),
                                           ("calibrated", 10.0)])
def test_sign_flipped_participant_falls_below_every_honest_one(reading, scale):
    spec = small_spec()
    gen = torch.Generator().manual_seed(2)
    theta = torch.randn(spec.dim, generator=gen)
    g = torch.randn(spec.dim, generator=gen)
    agg = Romoa(reading)
    for t in range(4):                                  # one sync period, τ = 4
        x = honest_round(g, 10, 0.5, gen)
        x[0] = -scale * x[0]
        ctx = ctx_for(spec, theta, t, sync=t == 3)
        out = agg(x, ctx) if ctx.sync else agg.observe(x, ctx)
    w = agg.weights
    assert w[0] < w[1:].min()
    assert w[0] < 0.3 * w[1:].mean()
    honest_mean = x[1:].mean(0)                          # the aggregate keeps the honest direction
    assert torch.dot(out, honest_mean) > 0.9 * honest_mean.norm() ** 2 * (1 - 0.2)


def test_literal_signed_generating_rewards_a_dominant_flipper():
    """Why the calibrated reading measures |m − c|: a large-norm adversary drags the plain
    lookahead mean towards itself, so its own similarity is the highest and m − c > 0."""
    spec = small_spec()
    gen = torch.Generator().manual_seed(2)
    theta = torch.randn(spec.dim, generator=gen)
    g = torch.randn(spec.dim, generator=gen)
    lit, cal = Romoa("literal"), Romoa("calibrated")
    for t in range(4):
        x = honest_round(g, 10, 0.5, gen)
        x[0] = -10 * x[0]
        for agg in (lit, cal):
            agg.observe(x, ctx_for(spec, theta, t, sync=False))
    assert lit.weights[0] > lit.weights[1:].median()
    assert cal.weights[0] < 0.3 * cal.weights[1:].min()


@pytest.mark.parametrize("reading", ["literal", "calibrated"])
def test_synchronous_use_every_call_is_a_sync(reading):
    spec = small_spec()
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(spec.dim, generator=gen)
    agg = Romoa(reading)
    for t in range(3):
        x = honest_round(torch.ones(spec.dim), 5, 0.3, gen)
        out = agg(x, ctx_for(spec, theta, t))
        assert out.shape == (spec.dim,) and torch.isfinite(out).all()
    assert agg.iteration == 3
    assert agg.observe(x, ctx_for(spec, theta, 3, sync=False)) is None


@pytest.mark.parametrize("reading", ["literal", "calibrated"])
def test_without_context_the_vector_is_one_layer(reading):
    gen = torch.Generator().manual_seed(6)
    x = honest_round(torch.ones(40), 5, 0.3, gen)
    out = Romoa(reading)(x)
    assert out.shape == (40,)
    assert len(Romoa(reading).report()) >= 2


def test_report_is_plain_json_with_per_participant_samples():
    spec = small_spec()
    gen = torch.Generator().manual_seed(7)
    theta = torch.randn(spec.dim, generator=gen)
    for reading in ("literal", "calibrated"):
        agg = Romoa(reading, report_samples=20)
        agg(honest_round(torch.ones(spec.dim), 4, 0.3, gen), ctx_for(spec, theta, 9, sync=True))
        rep = json.loads(json.dumps(agg.report()))
        assert rep["round"] == 9 and rep["sync"] is True and rep["reading"] == reading
        assert len(rep["weights"]) == 4 and len(rep["layer_cosine"]) == 4
        assert len(rep["layer_cosine"][0]) == len(spec.layers) == len(rep["layer_sizes"])
        s = rep["sample"]
        assert len(s["index"]) == 20
        for key in ("elementwise", "layer_cosine", "layer_pearson", "generating", "factor"):
            assert len(s[key]) == 4 and len(s[key][0]) == 20
        assert np.allclose(np.sum(s["factor"], axis=0), 1.0, atol=1e-5)


# ------------------------------------------------------------------ policies and errors


@pytest.mark.parametrize("reading", ["literal", "calibrated"])
def test_nonfinite_rows_get_factor_zero_with_a_warning(reading):
    spec = small_spec()
    gen = torch.Generator().manual_seed(8)
    theta = torch.randn(spec.dim, generator=gen)
    x = honest_round(torch.ones(spec.dim), 6, 0.3, gen)
    bad = x.clone()
    bad[2, 5] = float("nan")
    bad[4, 0] = float("inf")
    agg = Romoa(reading)
    with pytest.warns(RuntimeWarning, match="excluded 2 of 6"):
        out = agg(bad, ctx_for(spec, theta))
    keep = torch.tensor([True, True, False, True, False, True])
    ref = Romoa(reading)(x[keep], ctx_for(spec, theta))
    torch.testing.assert_close(out, ref)
    assert agg.weights[2] == 0 and agg.weights[4] == 0
    torch.testing.assert_close(agg.factors.sum(0), torch.ones(spec.dim))
    with warnings.catch_warnings():                     # the row may come back later
        warnings.simplefilter("error")
        agg(x, ctx_for(spec, theta, 1))
    assert agg.weights[2] > 0
    with pytest.raises(ValueError, match="all 6"), pytest.warns(RuntimeWarning):
        agg(torch.full_like(x, float("nan")), ctx_for(spec, theta))


def test_bad_input_and_options_raise_value_errors():
    spec = small_spec()
    theta = torch.zeros(spec.dim)
    agg = Romoa()
    for bad in (torch.zeros(3), torch.zeros(0, spec.dim), torch.zeros(3, 0),
                torch.zeros(3, spec.dim, dtype=torch.long), [[1.0]]):
        with pytest.raises(ValueError):
            agg(bad, ctx_for(spec, theta))
    with pytest.raises(ValueError, match="dimension"):
        agg(torch.zeros(3, spec.dim + 1), ctx_for(spec, torch.zeros(spec.dim + 1)))
    with pytest.raises(ValueError, match="client_ids"):
        agg(torch.zeros(3, spec.dim), ctx_for(spec, theta, ids=torch.tensor([0, 1])))
    for kwargs in ({"reading": "loose"}, {"selection_ratio": 0.0}, {"selection_ratio": 2},
                   {"beta": 0.0}, {"bandwidth": -1.0}, {"bandwidth": "silverman"},
                   {"tolerance": -1}, {"centroid": "median"}, {"kernel": "epanechnikov"},
                   {"layers": "block"}, {"pearson": "spearman"}, {"elementwise": "dot"},
                   {"selection": "gradient"}, {"generating": "log"}, {"report_samples": -1}):
        with pytest.raises(ValueError):
            Romoa(**kwargs)


def test_changed_participants_keep_their_factors():
    spec = small_spec()
    gen = torch.Generator().manual_seed(9)
    theta = torch.randn(spec.dim, generator=gen)
    agg = Romoa("calibrated")
    g = torch.randn(spec.dim, generator=gen)
    for t in range(3):
        x = honest_round(g, 5, 0.3, gen)
        x[0] *= -3
        agg(x, ctx_for(spec, theta, t, ids=torch.tensor([10, 11, 12, 13, 14])))
    before = agg.factors.clone()
    x = honest_round(g, 3, 0.3, gen)
    x[1] *= -3                                            # client 10, still adversarial
    agg.observe(x, ctx_for(spec, theta, 3, sync=False, ids=torch.tensor([13, 10, 99])))
    assert agg.factors.shape == (3, spec.dim)
    assert agg.weights[1] < agg.weights[0] and agg.weights[1] < agg.weights[2]
    assert before[0].mean() < before[3].mean()
    torch.testing.assert_close(agg.factors.sum(0), torch.ones(spec.dim))


def test_reset_forgets_history():
    spec = small_spec()
    gen = torch.Generator().manual_seed(10)
    theta = torch.randn(spec.dim, generator=gen)
    x = honest_round(torch.ones(spec.dim), 4, 0.3, gen)
    x[0] *= -2
    agg = Romoa("calibrated")
    first = agg(x, ctx_for(spec, theta)).clone()
    agg(x, ctx_for(spec, theta, 1))
    agg.reset()
    assert agg.factors is None and agg.weights is None and agg.iteration == 0
    torch.testing.assert_close(agg(x, ctx_for(spec, theta)), first)


def test_tensor_layers_option_uses_each_parameter_tensor():
    spec = small_spec()
    gen = torch.Generator().manual_seed(11)
    theta = torch.randn(spec.dim, generator=gen)
    agg = Romoa("calibrated", layers="tensor")
    agg(honest_round(torch.ones(spec.dim), 4, 0.3, gen), ctx_for(spec, theta))
    assert len(agg.report()["layer_sizes"]) == len(spec.names) == 4


def test_registry_builds_romoa_lazily():
    from fedlib import aggregators
    agg = aggregators.get("romoa", reading="calibrated", beta=0.25)
    assert isinstance(agg, Romoa) and agg.reading == "calibrated" and agg.beta == 0.25


# ------------------------------------------------ named options, presets and the preview


def test_generating_function_names_the_cluster_penalty_and_rejects_the_old_name():
    m = torch.tensor([0.5, -0.5], dtype=torch.float64)
    c = torch.tensor(0.5, dtype=torch.float64)
    member = torch.tensor([True, False])
    h = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(generating_function(m, c, "cluster_penalty", member=member,
                                                   bandwidth=h),
                               torch.tensor([0.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="generating"):
        generating_function(m, c, "clustered", member=member, bandwidth=h)
    with pytest.raises(ValueError, match="generating"):
        Romoa("literal", generating="clustered")


def test_presets_are_made_of_the_named_options():
    from fedlib.romoa import READINGS
    assert READINGS["calibrated"]["generating"] == "cluster_penalty"
    lit = Romoa("literal")
    built = Romoa("literal", selection="path", elementwise="cosine", pearson="centered",
                  bandwidth="robust", generating="cluster_penalty")
    cal = Romoa("calibrated")
    assert built.options == cal.options and built.bandwidth == cal.bandwidth
    assert lit.options["generating"] == "signed" and lit.bandwidth == "auto"
    spec = small_spec()
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(spec.dim, generator=gen)
    for t in range(3):
        x = honest_round(torch.ones(spec.dim), 5, 0.3, gen)
        x[0] *= -3.0
        ctx = ctx_for(spec, theta, t)
        torch.testing.assert_close(built(x, ctx), cal(x, ctx))


@pytest.mark.parametrize("reading", ["literal", "calibrated"])
def test_preview_returns_the_next_aggregate_and_leaves_the_state_untouched(reading):
    spec = small_spec()
    gen = torch.Generator().manual_seed(8)
    theta = torch.randn(spec.dim, generator=gen)
    agg, twin = Romoa(reading), Romoa(reading)
    for t in range(3):                                         # some history first
        x = honest_round(torch.ones(spec.dim), 5, 0.3, gen)
        agg.observe(x, ctx_for(spec, theta, t, sync=False))
        twin.observe(x, ctx_for(spec, theta, t, sync=False))
    F0, it0, w0, rep0 = agg.factors.clone(), agg.iteration, agg.weights.clone(), agg.report()
    x = honest_round(torch.ones(spec.dim), 5, 0.3, gen)
    x[0] = -4.0 * x[0]
    out, w = agg.preview(x, ctx_for(spec, theta, 3))
    assert torch.equal(agg.factors, F0) and agg.iteration == it0
    assert torch.equal(agg.weights, w0)
    assert json.dumps(agg.report(), sort_keys=True) == json.dumps(rep0, sort_keys=True)
    # the preview is exactly what the real call returns, and the real call still behaves
    real = twin(x, ctx_for(spec, theta, 3))
    torch.testing.assert_close(out, real, rtol=0, atol=0)
    torch.testing.assert_close(w, twin.weights, rtol=0, atol=0)
    torch.testing.assert_close(agg(x, ctx_for(spec, theta, 3)), real, rtol=0, atol=0)
    assert torch.equal(agg.factors, twin.factors)
