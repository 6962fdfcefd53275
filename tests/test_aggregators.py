"""Tests for fedlib.aggregators: hand-computed cases, bad input, NaN policy, properties."""

from __future__ import annotations

import math
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedlib.aggregators as agg
from fedlib.aggregators import distances
from fedlib.context import RoundContext
from fedlib.flat import ParamSpec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64
PROPS = settings(max_examples=40, deadline=None)


def t(rows, dtype=F64, device="cpu"):
    return torch.tensor(rows, dtype=dtype, device=device)


def ctx_with(server_update=None, client_ids=None, sync=True, d=1):
    spec = ParamSpec(("w",), ((d,),))
    return RoundContext(round=0, theta=torch.zeros(d), spec=spec, lr=0.1, sync=sync,
                        client_ids=client_ids, server_update=server_update)


# Every registry rule with parameters valid for n = 9 rows (f = 1), and how to call it.
RULES = {
    "mean": {},
    "weighted_mean": {"client_weights": [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0]},
    "krum": {"f": 1},
    "multi_krum": {"f": 1, "m": 4},
    "median": {},
    "trimmed_mean": {"f": 2},
    "clipped_median": {"threshold": 2.0},
    "geometric_median": {"iters": 10},
    "fltrust": {},
    "bulyan": {"f": 1},
    "centered_clipping": {"radius": 1.0, "iters": 3},
}
LINEAR = {"mean", "weighted_mean", "krum", "multi_krum", "geometric_median", "fltrust"}
COORDINATE = {"median", "trimmed_mean", "clipped_median", "bulyan"}


def call(name, x, server_update=None, **params):
    """Run registry rule ``name`` on x; return (output, weights, object)."""
    a = agg.get(name, **{**RULES[name], **params})
    d = x.shape[1]
    if server_update is None:
        server_update = torch.ones(d, dtype=x.dtype, device=x.device)
    ctx = ctx_with(server_update=lambda: server_update, d=d) if name == "fltrust" else None
    out = a(x, ctx)
    return out, a.weights, a


# ----------------------------------------------------------------------------- hand cases

def test_mean_hand():
    out, w, _ = call("mean", t([[1, 2], [3, 4]]))
    assert torch.allclose(out, t([2, 3]))
    assert torch.allclose(w, t([0.5, 0.5]))
    assert torch.allclose(agg.mean(t([[1, 2], [3, 4]])), t([2, 3]))


def test_weighted_mean_hand_and_client_ids():
    x = t([[1, 2], [3, 4]])
    assert torch.allclose(agg.weighted_mean(x, [1, 3]), t([2.5, 3.5]))
    a = agg.get("weighted_mean", client_weights=[5.0, 1.0, 3.0])  # clients 0, 1, 2
    out = a(x, ctx_with(client_ids=torch.tensor([2, 0]), d=2))  # rows are clients 2 and 0
    assert torch.allclose(out, (3 * x[0] + 5 * x[1]) / 8)
    assert torch.allclose(a.weights, t([3 / 8, 5 / 8]))


def test_krum_and_multi_krum_hand():
    # 1-D, f = 1, n = 5: scores over n − f − 2 = 2 nearest, squared:
    # 0: 1 + 6.25 = 7.25; 1: 1 + 2.25 = 3.25; 2.5: 2.25 + 2.25 = 4.5; 4: 2.25 + 9; 100: huge
    x = t([[0], [1], [2.5], [4], [100]])
    out, w, _ = call("krum", x)
    assert out.item() == 1.0 and w.tolist() == [0, 1, 0, 0, 0]
    assert agg.krum(x, 1).item() == 1.0
    out, w, _ = call("multi_krum", x, m=3)  # rows 1, 2.5, 0
    assert out.item() == pytest.approx(3.5 / 3)
    assert torch.allclose(w, t([1 / 3, 1 / 3, 1 / 3, 0, 0]))
    assert agg.multi_krum(x, 1).item() == pytest.approx(7.5 / 4)  # m = n − f = 4 lowest


def test_krum_returns_a_copy():
    x = t([[0], [1], [2.5], [4], [100]])
    out = agg.krum(x, 1)
    out += 10
    assert x[1].item() == 1.0


def test_median_hand_odd_and_even():
    out, w, _ = call("median", t([[1, 7], [5, 8], [3, 9]]))
    assert out.tolist() == [3, 8]
    assert torch.allclose(w, t([0, 0.5, 0.5]))  # client 2 fills coord 0, client 1 coord 1
    # even n: the mean of the two middle values, not torch.median's lower one (2)
    x = t([[1], [2], [10], [4]])
    assert torch.median(x, dim=0).values.item() == 2
    out, w, _ = call("median", x)
    assert out.item() == 3.0
    assert torch.allclose(w, t([0, 0.5, 0, 0.5]))


def test_trimmed_mean_hand_and_ties():
    out, w, _ = call("trimmed_mean", t([[1], [2], [3], [4], [100]]), f=1)
    assert out.item() == 3.0
    assert torch.allclose(w, t([0, 1, 1, 1, 0]) / 3)
    # three tied 1's compete for the 2 kept slots: each gets 2/3 of a slot
    out, w, _ = call("trimmed_mean", t([[1], [1], [1], [5]]), f=1)
    assert out.item() == 1.0
    assert torch.allclose(w, t([1, 1, 1, 0]) / 3)
    assert agg.trimmed_mean(t([[1], [2], [3], [4], [100]]), 0).item() == 22.0  # f = 0: mean


def test_clipped_median_hand():
    # norms 10, √2, 2√2 → scales 0.2, 1, 1/√2 → rows (1.2, 1.6), (1, 1), (√2, √2)
    x = t([[6, 8], [1, 1], [2, 2]])
    out, w, _ = call("clipped_median", x)
    assert torch.allclose(out, t([1.2, math.sqrt(2)]))
    assert torch.allclose(w, t([0.5, 0, 0.5]))
    assert torch.allclose(agg.median(x), t([2, 2]))  # without clipping
    assert torch.allclose(agg.clipped_median(x, threshold=100.0), t([2, 2]))


def test_geometric_median_hand():
    # 1-D: the geometric median is the median, 1; Weiszfeld from the mean 33.7 gets there
    out, w, _ = call("geometric_median", t([[0], [1], [100]]))
    assert out.item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(w @ t([[0], [1], [100]]), out)
    # symmetric square: the centre, which is also the mean
    sq = t([[0, 0], [2, 0], [0, 2], [2, 2]])
    assert torch.allclose(agg.geometric_median(sq), t([1, 1]))
    assert torch.allclose(agg.geometric_median(t([[0], [1], [100]]), iters=0), t([101 / 3]))


def test_fltrust_hand():
    x = t([[2, 0], [0, 3], [-1, 0], [1, 1]])
    g0 = t([1, 0])
    # TS = (1, 0, 0, 1/√2); rescaled rows (1, 0) and (1/√2, 1/√2)
    s = 1 + 1 / math.sqrt(2)
    expect = t([1.5, 0.5]) / s
    out, w, a = call("fltrust", x, server_update=g0)
    assert a.needs_server_update is True
    assert torch.allclose(out, expect)
    assert torch.allclose(w, t([0.5 / s, 0, 0, 0.5 / s]))
    assert torch.allclose(agg.fltrust(x, g0), expect)
    # nobody trusted (all cosines ≤ 0), or Δ₀ = 0: the zero update
    assert torch.equal(agg.fltrust(t([[-1, 0], [0, 2]]), g0), t([0, 0]))
    assert torch.equal(agg.fltrust(x, t([0, 0])), t([0, 0]))


def test_bulyan_hand():
    # f = 1, n = 7: θ = 5 picked by recursive Krum, β = 3 averaged per coordinate.
    # Krum on {0,1,3,4,7,20,50} (4 neighbours) picks 3; on the rest (3 neighbours) 4; then
    # (2) 1. With one neighbour, 0 and 7 tie at 49: the smaller total squared distance to
    # the remaining {0,7,20,50} wins (2067 < 2949) → 7; then 0 and 20 tie at 400 → 20
    # (1300 < 2900). Median of {1,3,4,7,20} is 4; the closest values are 4 and 3, and 1 and 7
    # tie at distance 3 for the last slot, which their mean fills: (4 + 3 + 4) / 3.
    x = t([[0], [1], [3], [4], [7], [20], [50]])
    out, w, _ = call("bulyan", x)
    assert out.item() == pytest.approx(11 / 3)
    assert torch.allclose(w, t([0, 0.5, 1, 1, 0.5, 0, 0]) / 3)
    sel = agg.selection.bulyan_selection(agg.pairwise_sq_distances(x), 1, 5)
    assert sel.tolist() == [2, 3, 1, 4, 5]
    assert agg.bulyan(x[:, [0, 0]], 1).tolist() == pytest.approx([11 / 3] * 2)


def test_centered_clipping_hand_and_state():
    x = t([[3, 4], [0, 0.5]])
    applied = ctx_with(d=2)  # sync=True: an aggregation the engine applies
    # v₀ = 0, τ = 1: clip factors 1/5 and 1 → v = ((0.6, 0.8) + (0, 0.5)) / 2
    a = agg.get("centered_clipping", radius=1.0, iters=1)
    v1 = a(x, applied)
    assert torch.allclose(v1, t([0.3, 0.65]))
    assert torch.allclose(a.weights, t([0.1, 0.5]))
    assert a.center_weight == pytest.approx(0.4)
    # the next applied round starts from v1 (the server momentum)
    d1 = x[0] - v1
    c1 = 1.0 / math.hypot(*d1.tolist())
    expect = v1 + 0.5 * (c1 * d1 + (x[1] - v1))  # ‖x₁ − v1‖ ≈ 0.34 < τ: not clipped
    assert torch.allclose(a(x), expect)  # a probe without ctx uses v1 ...
    assert torch.allclose(a.momentum, v1)  # ... but does not move it
    a(x + 5, ctx_with(sync=False, d=2))  # nor does a lookahead (non-sync) call
    assert torch.allclose(a.momentum, v1)
    v2 = a(x, applied)
    assert torch.allclose(v2, expect) and torch.allclose(a.momentum, v2)
    assert torch.allclose(agg.centered_clipping(x, radius=1.0, momentum=v1), expect)
    a.reset()
    assert a.momentum is None and a.weights is None
    assert torch.allclose(a(x), t([0.3, 0.65]))


@pytest.mark.parametrize("scale", [1.0, 1e6])
def test_distances_match_exact_even_next_to_huge_rows(scale):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5000, generator=g, dtype=torch.float32) + 100.0  # far from the origin
    x[3] *= scale  # one huge row: the mean is dragged away, the medoid re-centres
    exact = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    exact = exact.square()
    approx = distances.pairwise_sq_distances(x)
    assert approx.shape == (30, 30) and approx.dtype == torch.float64
    rel = (approx - exact).abs() / exact.clamp_min(1e-12)
    inliers = [i for i in range(30) if i != 3]
    assert rel[inliers][:, inliers].fill_diagonal_(0).max() < 1e-6
    assert rel[3].max() < 1e-6
    assert torch.equal(approx.diagonal(), torch.zeros(30, dtype=approx.dtype))
    assert torch.equal(approx, approx.T)


def test_huge_rows_overflow_to_float64_or_inf_not_nan():
    x = torch.randn(40, 8)
    x[:2] = 1e30  # squares overflow float32
    dist = distances.pairwise_sq_distances(x)  # float32 squares overflow: redone in float64
    assert torch.isfinite(dist).all()
    exact = torch.cdist(x[2:].double(), x[2:].double(),
                        compute_mode="donot_use_mm_for_euclid_dist").square()
    assert torch.allclose(dist[2:, 2:], exact, rtol=1e-6)  # the inliers' distances survive
    assert agg.krum(x, 2).abs().max() < 10  # an honest row is chosen
    y = torch.full((3, 2), 1e300, dtype=F64)
    y[1:] *= -1  # even float64 overflows: +inf, never NaN
    dist = distances.pairwise_sq_distances(y)
    assert not torch.isnan(dist).any() and torch.isinf(dist[0, 1])


@pytest.mark.parametrize("name", sorted(COORDINATE))
def test_cache_blocks_do_not_change_the_result(name, monkeypatch):
    from fedlib.aggregators import coordinate

    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.integers(0, 4, size=(9, 2500)).astype(np.float64))  # ties
    x[:, :1250] += torch.from_numpy(rng.normal(size=(9, 1250)))
    monkeypatch.setattr(coordinate, "BLOCK_BYTES", 1 << 40)  # one block
    whole, w_whole, _ = call(name, x)
    monkeypatch.setattr(coordinate, "BLOCK_BYTES", 1)  # blocks of 1024 columns: 3 blocks
    blocked, w_blocked, _ = call(name, x)
    assert torch.allclose(blocked, whole) and torch.allclose(w_blocked, w_whole)
    if name == "median":
        assert np.allclose(blocked.numpy(), np.median(x.numpy(), axis=0))


@pytest.mark.parametrize("name", sorted(COORDINATE))
def test_torch_sort_path_matches_numpy_path(name):
    # CPU float tensors are sorted by NumPy; tensors that need autograd (and CUDA ones) by torch
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.integers(0, 3, size=(11, 40)).astype(np.float32))
    x[:, 20:] += torch.from_numpy(rng.normal(size=(11, 20)).astype(np.float32))
    out, w, _ = call(name, x)
    out_t, w_t, _ = call(name, x.clone().requires_grad_(True))
    assert torch.allclose(out_t.detach(), out) and torch.allclose(w_t, w)


# ----------------------------------------------------------------------------- bad input

BAD_UPDATES = [
    torch.zeros(5),  # 1-D
    torch.zeros(0, 9, 3),  # an empty batch of replicas
    torch.zeros(0, 4),  # no clients
    torch.zeros(9, 0),  # no coordinates
    torch.zeros(9, 3, dtype=torch.int64),  # not floating point
    [[0.0, 1.0]] * 9,  # not a tensor
]


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("bad", range(len(BAD_UPDATES)))
def test_bad_shapes_raise_value_error(name, bad):
    a = agg.get(name, **RULES[name])
    ctx = ctx_with(server_update=lambda: torch.ones(3), d=3)
    with pytest.raises(ValueError):
        a(BAD_UPDATES[bad], ctx)


@pytest.mark.parametrize("fn, kwargs", [
    (agg.krum, {"f": -1}), (agg.krum, {"f": 1.5}), (agg.krum, {"f": True}),
    (agg.krum, {"f": 2}),  # n = 6 ≤ 2f + 2
    (agg.multi_krum, {"f": 1, "m": 0}), (agg.multi_krum, {"f": 1, "m": 7}),
    (agg.multi_krum, {"f": 2}),
    (agg.trimmed_mean, {"f": 3}),  # n = 6 ≤ 2f
    (agg.bulyan, {"f": 1}),  # n = 6 < 4f + 3
    (agg.clipped_median, {"threshold": 0.0}), (agg.clipped_median, {"threshold": math.inf}),
    (agg.geometric_median, {"eps": 0.0}), (agg.geometric_median, {"iters": -1}),
    (agg.centered_clipping, {"radius": -1.0}), (agg.centered_clipping, {"iters": 0}),
    (agg.centered_clipping, {"momentum": torch.zeros(3)}),
    (agg.centered_clipping, {"momentum": torch.full((2,), math.nan)}),
    (agg.weighted_mean, {"weights": [1.0] * 5}), (agg.weighted_mean, {"weights": [-1.0] * 6}),
    (agg.weighted_mean, {"weights": [0.0] * 6}),
    (agg.fltrust, {"server_update": torch.ones(3)}),
    (agg.fltrust, {"server_update": torch.tensor([1.0, math.inf])}),
])
def test_impossible_parameters_raise_value_error(fn, kwargs):
    with pytest.raises(ValueError):
        fn(torch.randn(6, 2), **kwargs)


def test_krum_error_message_is_clear():
    with pytest.raises(ValueError, match=r"n > 2f \+ 2"):
        agg.krum(torch.randn(6, 2), 2)
    with pytest.raises(ValueError, match=r"n ≥ 4f \+ 3"):
        agg.bulyan(torch.randn(6, 2), 1)


def test_get_errors():
    with pytest.raises(ValueError, match="krum"):  # lists the valid names
        agg.get("no_such_rule")
    with pytest.raises(ValueError):
        agg.get("krum")  # f is required
    with pytest.raises(ValueError):
        agg.get("median", f=1)  # unknown parameter
    with pytest.raises(ValueError):
        agg.get("krum", f=-2)  # validated at get time
    with pytest.raises(ValueError):
        agg.get("weighted_mean", client_weights=[])
    with pytest.raises(ValueError, match="server_update"):
        agg.get("fltrust")(torch.randn(4, 2))
    with pytest.raises(ValueError):  # stored momentum no longer fits
        a = agg.get("centered_clipping")
        a(torch.randn(4, 2), ctx_with(d=2))
        a(torch.randn(4, 3))


def test_overflowing_aggregate_raises():
    from fedlib.aggregators._checks import run_rule

    def overflowing(x):
        return x.sum(dim=0), torch.ones(x.shape[0])  # 3e38 + 3e38 = inf in float32

    with pytest.raises(ValueError, match="overflow"):
        run_rule(overflowing, torch.full((2, 3), 3e38), "test")


# ----------------------------------------------------------------------------- NaN policy

@pytest.mark.parametrize("name", sorted(RULES))
def test_nonfinite_rows_are_excluded_with_warning(name):
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(9, 4, generator=g, dtype=F64)
    x = torch.cat([clean[:3], t([[math.nan, 0, 0, 0], [0, math.inf, 0, -math.inf]]), clean[3:]])
    kw = dict(RULES[name])
    if name == "weighted_mean":
        kw["client_weights"] = kw["client_weights"][:3] + [7.0, 7.0] + kw["client_weights"][3:]
    a, b = agg.get(name, **kw), agg.get(name, **RULES[name])
    ctx = ctx_with(server_update=lambda: torch.ones(4, dtype=F64), d=4)
    with pytest.warns(RuntimeWarning, match="excluded 2 of 11"):
        out = a(x, ctx)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, b(clean, ctx))
    assert a.weights[3:5].tolist() == [0.0, 0.0]
    assert torch.allclose(a.weights[[0, 1, 2, 5, 6, 7, 8, 9, 10]], b.weights)


@pytest.mark.parametrize("name", sorted(RULES))
def test_all_rows_nonfinite_raise(name):
    x = torch.full((9, 3), math.nan)
    ctx = ctx_with(server_update=lambda: torch.ones(3), d=3)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="NaN"):
        agg.get(name, **RULES[name])(x, ctx)


def test_too_few_finite_rows_for_krum_and_bulyan():
    x = torch.randn(7, 3)
    x[0, 0] = math.nan  # 6 finite rows, f = 2 unchanged → 6 ≤ 2f + 2
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="after excluding 1"):
        agg.krum(x, 2)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError):
        agg.bulyan(x, 1)  # 6 < 4f + 3


def test_finite_input_never_warns():
    x = torch.randn(9, 4) * 1e15  # huge but finite: kept, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in RULES:
            out, _, _ = call(name, x)
            assert torch.isfinite(out).all(), name


# ----------------------------------------------------------------------------- registry

def test_registry_names_and_objects():
    names = agg.available()
    for name in [*RULES, "rfa", "romoa"]:
        assert name in names
    for name in RULES:
        a = agg.get(name, **RULES[name])
        assert a.name == name and a.weights is None
        assert getattr(a, "needs_server_update", False) == (name == "fltrust")
    assert agg.get("rfa").name == "geometric_median"
    assert agg.get("RFA", iters=3).rule.params["iters"] == 3


def test_romoa_is_imported_lazily(monkeypatch):
    code = "import sys, fedlib.aggregators; assert 'fedlib.romoa' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    fake = types.ModuleType("fedlib.romoa")

    class Romoa:
        def __init__(self, **params):
            self.params = params

    fake.Romoa = Romoa
    monkeypatch.setitem(sys.modules, "fedlib.romoa", fake)
    r = agg.get("romoa", beta=0.5)
    assert isinstance(r, Romoa) and r.params == {"beta": 0.5}


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("device", DEVICES)
def test_weights_explain_the_output(name, device):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 5, generator=g, dtype=F64).to(device)
    out, w, a = call(name, x)
    assert out.shape == (5,) and out.device == x.device and out.dtype == x.dtype
    assert w.shape == (9,) and w.device == x.device and bool((w >= 0).all())
    if name in LINEAR:
        assert torch.allclose(w @ x, out)
    if name == "centered_clipping":
        assert torch.allclose(w @ x, out)  # v₀ = 0 on the first call
        assert w.sum().item() == pytest.approx(1 - a.center_weight)
    if name in COORDINATE or name in LINEAR - {"fltrust"}:
        assert w.sum().item() == pytest.approx(1.0)
    if name == "krum":
        assert sorted(w.tolist())[-2:] == [0.0, 1.0]
    if name == "multi_krum":
        assert sorted(set(w.tolist())) == [0.0, 0.25]


def test_inputs_are_not_modified():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 5, generator=g)
    before = x.clone()
    for name in RULES:
        call(name, x)
    assert torch.equal(x, before)


def test_float32_and_float64_agree():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 6, generator=g, dtype=F64)
    for name in RULES:
        o64, _, _ = call(name, x)
        o32, _, _ = call(name, x.float())
        assert o32.dtype == torch.float32
        assert torch.allclose(o32.double(), o64, atol=1e-4), name


# ----------------------------------------------------------------------------- properties

def honest_and_byzantine(seed, n_honest, n_byz, d, scale, clones):
    """N(0, I) honest rows; Byzantine rows with every |coordinate| ≥ scale, random signs."""
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(n_honest, d, generator=g, dtype=F64)
    rows = 1 if clones else n_byz
    mag = scale * (1 + torch.rand(rows, d, generator=g, dtype=F64))
    sign = torch.randint(0, 2, (rows, d), generator=g).to(F64) * 2 - 1
    return honest, (mag * sign).expand(n_byz, d)


@PROPS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(9, 24), d=st.integers(1, 6),
       name=st.sampled_from(sorted(RULES)))
def test_permutation_invariance(seed, n, d, name):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    perm = torch.randperm(n, generator=g)
    kw = {"client_weights": torch.rand(n, generator=g, dtype=F64).tolist()} \
        if name == "weighted_mean" else {}
    out, w, _ = call(name, x, **kw)
    if name == "weighted_mean":
        kw["client_weights"] = [kw["client_weights"][i] for i in perm.tolist()]
    out_p, w_p, _ = call(name, x[perm], **kw)
    assert torch.allclose(out, out_p, atol=1e-10)
    assert torch.allclose(w[perm], w_p, atol=1e-10)


@PROPS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(9, 24), d=st.integers(1, 6),
       shift=st.floats(-1e3, 1e3),
       name=st.sampled_from(["mean", "weighted_mean", "krum", "multi_krum", "median",
                             "trimmed_mean", "geometric_median", "bulyan",
                             "centered_clipping"]))
def test_translation_equivariance(seed, n, d, shift, name):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    c = shift * torch.randn(d, generator=g, dtype=F64)
    kw = {"client_weights": [1.0] * n} if name == "weighted_mean" else {}
    if name == "centered_clipping":  # equivariant when the centre moves too
        v0 = torch.randn(d, generator=g, dtype=F64)
        out = agg.centered_clipping(x, radius=1.0, iters=3, momentum=v0)
        out_t = agg.centered_clipping(x + c, radius=1.0, iters=3, momentum=v0 + c)
    else:
        out, out_t = call(name, x, **kw)[0], call(name, x + c, **kw)[0]
    assert torch.allclose(out_t, out + c, atol=1e-8 * (1 + abs(shift)))


@PROPS
@given(seed=st.integers(0, 2**31 - 1), f=st.integers(1, 5), d=st.integers(1, 6),
       log_scale=st.floats(2, 12), clones=st.booleans(),
       name=st.sampled_from(["median", "trimmed_mean", "krum", "multi_krum", "bulyan",
                             "clipped_median"]))
def test_huge_byzantine_rows_stay_in_honest_range(seed, f, d, log_scale, clones, name):
    n = 4 * f + 3 + seed % 4  # enough for every rule (Bulyan: n ≥ 4f + 3)
    honest, byz = honest_and_byzantine(seed, n - f, f, d, 10.0 ** log_scale, clones)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x = torch.cat([byz, honest])[perm]
    is_byz = perm < f
    params = {} if name in ("median", "clipped_median") else {"f": f}
    if name == "multi_krum":
        params["m"] = n - f
    out, w, _ = call(name, x, **params)
    if name == "clipped_median":  # the bound holds for the clipped honest rows
        honest = honest * (2.0 / honest.norm(dim=1, keepdim=True)).clamp(max=1.0)
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    assert bool((out >= lo - 1e-9).all() and (out <= hi + 1e-9).all())
    if name in ("krum", "multi_krum", "bulyan", "trimmed_mean"):  # Byzantine rows unused
        assert w[is_byz].abs().sum().item() == 0.0


@PROPS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 30), d=st.integers(1, 5),
       levels=st.integers(2, 6))
def test_median_and_trimmed_mean_match_sorting(seed, n, d, levels):
    # integer-valued data: many ties
    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, size=(n, d)).astype(np.float64)
    assert np.allclose(agg.median(torch.from_numpy(x)).numpy(), np.median(x, axis=0))
    f = int(rng.integers(0, (n - 1) // 2 + 1))
    s = np.sort(x, axis=0)
    tm, w, _ = call("trimmed_mean", torch.from_numpy(x), f=f)
    assert np.allclose(tm.numpy(), s[f:n - f].mean(axis=0))
    assert w.sum().item() == pytest.approx(1.0)


@PROPS
@given(seed=st.integers(0, 2**31 - 1), f=st.integers(0, 3), extra=st.integers(0, 8),
       d=st.integers(1, 5))
def test_krum_and_bulyan_match_brute_force(seed, f, extra, d):
    n = 4 * f + 3 + extra
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    xs = x.numpy()
    dist = ((xs[:, None, :] - xs[None, :, :]) ** 2).sum(-1)

    def krum_pick(idx):  # Krum on rows idx; ties: smaller total distance, then lower index
        sub = dist[np.ix_(idx, idx)]
        k = min(max(len(idx) - f - 2, 1), len(idx) - 1)
        scores = [np.sort(np.delete(row, i))[:k].sum() for i, row in enumerate(sub)]
        return idx[np.lexsort((np.arange(len(idx)), sub.sum(axis=1), scores))[0]]

    everyone = list(range(n))
    assert torch.equal(agg.krum(x, f), x[krum_pick(everyone)])
    left, picked = everyone, []
    for _ in range(n - 2 * f):
        best = krum_pick(left)
        picked.append(best)
        left = [i for i in left if i != best]
    sel = xs[picked]
    beta = n - 4 * f
    med = np.median(sel, axis=0)
    order = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:beta]
    expect = np.take_along_axis(sel, order, axis=0).mean(axis=0)
    assert np.allclose(agg.bulyan(x, f).numpy(), expect)


@PROPS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 40), d=st.integers(1, 9000),
       offset=st.floats(0, 1e3), log_scale=st.floats(0, 8))
def test_distances_match_float64_cdist(seed, n, d, offset, log_scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) + offset
    x[0] *= 10.0 ** log_scale  # possibly one huge row
    exact = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    exact = exact.square()
    # relative 1e-5, plus an absolute slack at the inliers' scale for nearly equal rows
    # (float32 rounding of xᵢ − centre)
    scale = exact[1:, 1:].median() if n > 2 else exact.max()
    err = (distances.pairwise_sq_distances(x) - exact).abs()
    assert bool((err <= 1e-5 * exact + 1e-6 * scale).all())


@PROPS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 30), d=st.integers(1, 8),
       n_out=st.integers(0, 5), log_scale=st.floats(0, 6))
def test_geometric_median_decreases_sum_of_distances(seed, n, d, n_out, log_scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    x[:min(n_out, n - 1)] *= 10.0 ** log_scale
    objective = lambda z: (x - z).norm(dim=1).sum().item()  # noqa: E731
    gm = agg.geometric_median(x)
    assert objective(gm) <= objective(x.mean(dim=0)) * (1 + 1e-9) + n * 1e-6
    slack = n * 1e-6  # the smoothing eps: Weiszfeld descends on the smoothed objective
    assert objective(agg.geometric_median(x, iters=30)) <= objective(gm) * (1 + 1e-9) + slack


# ----------------------------------------------------------------------------- zero and tiny norms

def test_row_norms_do_not_underflow():
    from fedlib.aggregators._checks import row_norms

    x = torch.tensor([[1e-30] * 4, [0.0] * 4, [3.0, 4.0, 0.0, 0.0], [1e-40, 0.0, 0.0, 0.0]])
    norms = row_norms(x)  # float32: the squares of 1e-30 underflow to 0
    assert norms[0].item() == pytest.approx(2e-30, rel=1e-6, abs=0)
    assert norms[1].item() == 0.0 and norms[2].item() == 5.0
    assert norms[3].item() == pytest.approx(1e-40, rel=1e-3, abs=0)  # subnormal, still > 0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fltrust_zero_update_gets_weight_zero_not_nan(dtype):
    # a zero upload (stealth 0 with the literal base, Gaussian std 0, "send nothing") has
    # no direction: trust 0, weight 0 — before, its weight was 0·∞ = NaN and the run aborted
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]], dtype=dtype)
    g0 = torch.tensor([1.0, 0.0], dtype=dtype)
    out, w, _ = call("fltrust", x, server_update=g0)
    assert torch.isfinite(w).all() and w[0].item() == 0.0
    expect, w_rest, _ = call("fltrust", x[1:], server_update=g0)
    assert torch.allclose(out, expect) and torch.allclose(w[1:], w_rest)
    assert torch.equal(agg.fltrust(torch.zeros(3, 2, dtype=dtype), g0),
                       torch.zeros(2, dtype=dtype))


def test_fltrust_tiny_float32_update_is_rescaled_not_nan():
    # ‖Δ₀‖/‖Δᵢ‖ must use the true norm of a 1e-30 row, whose float32 squares underflow
    x = torch.tensor([[1e-30, 1e-30], [1.0, 0.1], [0.5, -0.2]])
    g0 = torch.tensor([0.3, 0.1])
    out, w, _ = call("fltrust", x, server_update=g0)
    ref, w_ref, _ = call("fltrust", x.double(), server_update=g0.double())
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert torch.allclose(out.double(), ref, rtol=1e-5)
    assert torch.allclose(w.double(), w_ref, rtol=1e-5)  # w₀ ≈ 8e28: the ‖Δ₀‖/‖Δᵢ‖ rescale


@pytest.mark.parametrize("name", ["clipped_median", "centered_clipping", "geometric_median",
                                  "krum", "bulyan"])
@pytest.mark.parametrize("fill", [0.0, 1e-30])
def test_rules_that_divide_by_norms_survive_zero_and_tiny_rows(name, fill):
    # every rule dividing by a norm or a distance: several identical zero / 1e-30 rows
    g = torch.Generator().manual_seed(7)
    x = torch.randn(9, 4, generator=g) * 1e-2
    x[:5] = fill  # a majority at the same point: distances 0 among them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, w, _ = call(name, x, **({"radius": "median_norm"} if name == "centered_clipping"
                                     else {}))
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert out.abs().max().item() <= x.abs().max().item()


# ------------------------------------------------------------------------ centered clipping radius

def ipm_round(seed, d=20, n=10, m=2, epsilon=5.0, scale=1e-2):
    """One round of uploads at lr·gradient scale: n − m benign rows, m IPM rows −ε·mean(benign)."""
    g = torch.Generator().manual_seed(seed)
    mu = scale * torch.ones(d, dtype=F64)
    benign = mu + 0.5 * scale * torch.randn(n - m, d, generator=g, dtype=F64)
    ipm = -epsilon * benign.mean(dim=0)
    return torch.cat([benign, ipm.expand(m, d)]), benign.mean(dim=0)


def test_centered_clipping_default_radius_follows_the_uploads_and_resists_ipm():
    # τ = 10 (the old default) never clips lr-scaled uploads: the rule is the mean, which
    # IPM (ε = 5, 2 of 10) reverses; τ = median upload norm keeps the benign direction
    old, new = agg.get("centered_clipping", radius=10.0), agg.get("centered_clipping")
    assert new.rule.params["radius"] == "median_norm"
    for round_ in range(5):
        x, benign_mean = ipm_round(round_)
        ctx = ctx_with(d=x.shape[1])
        assert torch.dot(old(x, ctx), benign_mean) < 0  # the defect: reversed
        assert torch.dot(new(x, ctx), benign_mean) > 0
        assert torch.allclose(old.weights, torch.full((10,), 0.1, dtype=F64))  # = the mean


def test_centered_clipping_median_norm_is_scale_equivariant_and_validated():
    x, _ = ipm_round(0)
    for s in (1e-6, 1.0, 1e6):
        assert torch.allclose(agg.centered_clipping(x * s), agg.centered_clipping(x) * s)
    norms = x.norm(dim=1).sort().values
    radius = float(norms[4] * 0.5 + norms[5] * 0.5)  # even n: mean of the two middle norms
    assert torch.allclose(agg.centered_clipping(x), agg.centered_clipping(x, radius=radius))
    for bad in ("median", "", None):
        with pytest.raises(ValueError, match="radius"):
            agg.get("centered_clipping", radius=bad)
    assert torch.equal(agg.centered_clipping(torch.zeros(4, 3)), torch.zeros(3))


# ----------------------------------------------------------------------------- f per call

def ctx_f(f, d=2):
    spec = ParamSpec(("w",), ((d,),))
    return RoundContext(round=0, theta=torch.zeros(d), spec=spec, lr=0.1, num_malicious=f)


@pytest.mark.parametrize("name, extra", [("krum", {}), ("multi_krum", {}),
                                         ("multi_krum", {"m": 3}), ("trimmed_mean", {}),
                                         ("bulyan", {})])
def test_f_per_call_equals_a_fixed_f(name, extra):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(12, 5, generator=g, dtype=F64)
    per_call = agg.get(name, f="per_call", **extra)
    assert per_call.batched is True
    for f in (0, 1, 2):
        fixed = agg.get(name, f=f, **extra)
        assert torch.equal(per_call(x, ctx_f(f, 5)), fixed(x))
        assert torch.equal(per_call.weights, fixed.weights)
        assert torch.equal(per_call(x, ctx_f(torch.tensor(f), 5)), fixed(x))
    # a batch: each replica its own f, equal to separate calls with that f
    xb = torch.randn(4, 12, 5, generator=g, dtype=F64)
    fs = torch.tensor([2, 0, 2, 1])
    out = per_call(xb, ctx_f(fs, 5))
    for b in range(4):
        fixed = agg.get(name, f=int(fs[b]), **extra)
        assert torch.allclose(out[b], fixed(xb[b]), rtol=1e-12, atol=1e-14)
        assert torch.allclose(per_call.weights[b], fixed.weights, rtol=1e-12, atol=1e-14)


def test_f_per_call_validation_names_the_replica():
    a = agg.get("krum", f="per_call")
    x = torch.randn(3, 7, 2)
    with pytest.raises(ValueError, match="num_malicious"):
        a(x)  # no context
    with pytest.raises(ValueError, match="num_malicious"):
        a(x[0], ctx_f(None))
    with pytest.raises(ValueError, match="replicas"):
        a(x, ctx_f(torch.tensor([1, 1])))  # 2 counts for 3 replicas
    with pytest.raises(ValueError, match="replica 2"):
        a(x, ctx_f(torch.tensor([1, 1, -1])))
    with pytest.raises(ValueError):
        a(x, ctx_f(torch.tensor([1.0, 1.0, 1.0])))  # not integer
    with pytest.raises(ValueError, match=r"n ≥ 4f \+ 3"):
        agg.get("bulyan", f="per_call")(torch.randn(2, 2), ctx_f(1))   # not even f = 0 fits
    with pytest.raises(ValueError, match="per_call"):
        agg.get("krum", f="each_call")
    with pytest.raises(ValueError):
        agg.get("multi_krum", f="per_call", m=0)


def test_f_per_call_caps_a_count_the_rule_cannot_tolerate():
    x = torch.randn(3, 7, 2, dtype=F64)
    out = agg.get("krum", f="per_call")(x, ctx_f(torch.tensor([1, 3, 0])))  # n = 7 ≤ 2·3 + 2
    for b, f in enumerate([1, 2, 0]):                          # 3 → the largest valid, 2
        assert torch.equal(out[b], agg.get("krum", f=f)(x[b]))
    y = torch.randn(6, 2, dtype=F64)
    assert torch.equal(agg.get("bulyan", f="per_call")(y, ctx_f(1)), agg.get("bulyan", f=0)(y))
    z = torch.randn(10, 3, dtype=F64)
    assert torch.equal(agg.get("trimmed_mean", f="per_call")(z, ctx_f(7)),
                       agg.get("trimmed_mean", f=4)(z))


@pytest.mark.parametrize("scale", [1e-25, 1e-35])
def test_distances_to_the_centre_do_not_underflow(scale):
    # centered clipping compares ‖Δᵢ − v‖ with τ: at float32 scales where the squares of the
    # differences underflow, the distances must not become 0 (which would switch clipping off)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 20, generator=g)
    x[8:] = -5 * x[:8].mean(dim=0)  # IPM rows, clipped at τ = the median norm
    expect = agg.centered_clipping(x, iters=3)
    got = agg.centered_clipping(x * scale, iters=3) / scale
    assert torch.allclose(got, expect, rtol=1e-4, atol=1e-5 * expect.abs().max().item())
    z = torch.zeros(20)
    assert torch.allclose(agg.iterative.distances_to(x * scale, z) / scale, x.norm(dim=1),
                          rtol=1e-4)
