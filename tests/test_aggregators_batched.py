"""Replica batches for fedlib.aggregators: (..., n, d) calls equal separate (n, d) calls, and
unbatched calls equal the frozen pre-batching implementation bit for bit (the geometric median,
whose distance pass was rewritten since, to float rounding).

Tolerance: rules whose output is a selected row or coordinate-wise order statistics (Krum,
median, trimmed mean, clipped median, Bulyan) equal the separate calls *exactly* (torch.equal),
weights included. Rules that output a linear combination Σᵢ wᵢΔᵢ (mean, weighted mean,
multi-Krum, geometric median, FLTrust, centered clipping) compute it, and FLTrust its cosines,
with a batched matrix product whose summation order can differ from the (n, d) product's:
equal to float rounding, rtol = atol/scale = 1e-10 in float64 and 1e-4 in float32.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedlib.aggregators as agg
from fedlib.context import RoundContext
from fedlib.flat import ParamSpec

sys.path.insert(0, str(Path(__file__).parent))
import _frozen_aggregators.averaging as old_avg  # noqa: E402
import _frozen_aggregators.coordinate as old_coord  # noqa: E402
import _frozen_aggregators.iterative as old_iter  # noqa: E402
import _frozen_aggregators.selection as old_sel  # noqa: E402

F64 = torch.float64
PROPS = settings(max_examples=40, deadline=None)
POPULATION = 40  # client ids are drawn from 0..39

RULES = {
    "mean": {},
    "weighted_mean": {"client_weights": [1.0 + (k % 7) for k in range(POPULATION)]},
    "krum": {"f": 1},
    "multi_krum": {"f": 1, "m": 4},
    "median": {},
    "trimmed_mean": {"f": 2},
    "clipped_median": {"threshold": 2.0},
    "geometric_median": {"iters": 10},
    "fltrust": {},
    "bulyan": {"f": 1},
    "centered_clipping": {"radius": 1.0, "iters": 3},
    "centered_clipping/median_norm": {"iters": 2},
}


def build(key):
    return agg.get(key.split("/")[0], **RULES[key])


def ctx(d, server=None, ids=None, sync=True, num_malicious=None):
    return RoundContext(round=0, theta=torch.zeros(d), spec=ParamSpec(("w",), ((d,),)),
                        lr=0.1, sync=sync, client_ids=ids,
                        server_update=None if server is None else (lambda: server),
                        num_malicious=num_malicious)


EXACT = {"krum", "median", "trimmed_mean", "clipped_median", "bulyan"}


def same(a, b, key, dtype):
    if key in EXACT:
        return torch.equal(a, b)
    rtol = 1e-10 if dtype == F64 else 1e-4
    return torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max().clamp_min(1e-30)))


def problem(seed, lead, n, d, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, d, generator=g, dtype=dtype)
    x *= torch.exp(2 * torch.randn(*lead, n, 1, generator=g, dtype=dtype))  # mixed scales
    server = torch.randn(*lead, d, generator=g, dtype=dtype)
    ids = torch.argsort(torch.rand(*lead, POPULATION, generator=g), dim=-1)[..., :n]
    return x, server, ids


def check_batch_equals_separate(key, x, server, ids, dtype, rounds=1):
    lead, (n, d) = x.shape[:-2], x.shape[-2:]
    batched = build(key)
    singles = [build(key) for _ in range(math.prod(lead))]
    xs, ss, js = x.reshape(-1, n, d), server.reshape(-1, d), ids.reshape(-1, n)
    for r in range(rounds):
        xr = x + r  # later rounds: centered clipping starts from its momentum
        out = batched(xr, ctx(d, server, ids))
        assert out.shape == (*lead, d) and batched.weights.shape == (*lead, n)
        flat_out, flat_w = out.reshape(-1, d), batched.weights.reshape(-1, n)
        for b, single in enumerate(singles):
            o = single(xs[b] + r, ctx(d, ss[b], js[b]))
            assert same(flat_out[b], o, key, dtype), (key, b, r)
            assert same(flat_w[b], single.weights, key, dtype), (key, b, r)
    assert getattr(batched, "batched", False) is True


@PROPS
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 4), n=st.integers(9, 24),
       d=st.integers(1, 200), key=st.sampled_from(sorted(RULES)))
def test_batched_rule_objects_equal_separate_calls(seed, b, n, d, key):
    x, server, ids = problem(seed, (b,), n, d)
    check_batch_equals_separate(key, x, server, ids, F64, rounds=2)


@pytest.mark.parametrize("key", sorted(RULES))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_batched_equal_separate_at_larger_sizes(key, dtype):
    # d > the Gram chunk (4096) and ties from rounding-free integer data in one replica
    x, server, ids = problem(5, (2, 2), 11, 4500, dtype)
    x[0, 1] = torch.randint(0, 3, (11, 4500), generator=torch.Generator().manual_seed(1))
    check_batch_equals_separate(key, x, server, ids, dtype)


@PROPS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(9, 14), d=st.integers(1, 30),
       key=st.sampled_from(sorted(RULES)), bad=st.sets(st.integers(0, 3), max_size=3))
def test_nan_policy_per_replica(seed, n, d, key, bad):
    x, server, ids = problem(seed, (4,), n, d)
    for b in bad:  # replica b gets one or two non-finite rows
        x[b, b % n, 0] = math.nan
        if b % 2:
            x[b, (b + 3) % n, -1] = -math.inf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_batch_equals_separate(key, x, server, ids, F64)
    batch_warnings = [w for w in caught if "replica" in str(w.message)]
    assert {int(str(w.message).rsplit(" ", 1)[1]) for w in batch_warnings} == bad


def test_nan_errors_name_the_replica():
    x = torch.randn(3, 7, 2)
    x[2, :3] = math.nan  # 4 finite rows left in replica 2: Krum f = 1 needs 5
    with pytest.warns(RuntimeWarning, match="replica 2"), \
            pytest.raises(ValueError, match=r"n > 2f \+ 2.*replica 2"):
        agg.krum(x, 1)
    x[1] = math.nan
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="all 7.*replica 1"):
        agg.mean(x)


def test_leading_dimensions_and_public_functions():
    x, server, _ = problem(3, (2, 3), 9, 6)
    w = torch.rand(2, 3, 9, dtype=F64)
    v0 = torch.randn(2, 3, 6, dtype=F64)
    fns = {
        "mean": (agg.mean, {}), "median": (agg.median, {}),
        "trimmed_mean": (agg.trimmed_mean, {"f": 2}), "krum": (agg.krum, {"f": 1}),
        "multi_krum": (agg.multi_krum, {"f": 1}), "bulyan": (agg.bulyan, {"f": 1}),
        "clipped_median": (agg.clipped_median, {}),
        "geometric_median": (agg.geometric_median, {}),
    }
    for name, (fn, kw) in fns.items():
        out = fn(x, **kw)
        assert out.shape == (2, 3, 6), name
        for i in range(2):
            for j in range(3):
                assert same(out[i, j], fn(x[i, j], **kw), name, F64), name
    out = agg.weighted_mean(x, w)
    out_shared = agg.weighted_mean(x, w[0, 0])  # (n,) weights shared by every replica
    out_ft = agg.fltrust(x, server)
    out_cc = agg.centered_clipping(x, momentum=v0)
    for i in range(2):
        for j in range(3):
            assert same(out[i, j], agg.weighted_mean(x[i, j], w[i, j]), "", F64)
            assert same(out_shared[i, j], agg.weighted_mean(x[i, j], w[0, 0]), "", F64)
            assert same(out_ft[i, j], agg.fltrust(x[i, j], server[i, j]), "", F64)
            assert same(out_cc[i, j], agg.centered_clipping(x[i, j], momentum=v0[i, j]), "", F64)


def test_batched_shape_errors():
    x = torch.randn(3, 9, 4)
    with pytest.raises(ValueError, match="server_update"):
        agg.fltrust(x, torch.randn(4))  # needs (3, 4)
    with pytest.raises(ValueError, match="momentum"):
        agg.centered_clipping(x, momentum=torch.randn(4))
    with pytest.raises(ValueError, match="weights"):
        agg.weighted_mean(x, torch.rand(2, 9))
    with pytest.raises(ValueError, match="sum to 0"):
        agg.weighted_mean(x, torch.cat([torch.rand(2, 9), torch.zeros(1, 9)]))
    cc = agg.get("centered_clipping")
    cc(x, ctx(4))
    assert cc.momentum.shape == (3, 4) and cc.center_weight.shape == (3,)
    with pytest.raises(ValueError, match="reset"):
        cc(x[0], ctx(4))  # momentum (3, 4) does not fit an unbatched call
    with pytest.raises(ValueError):
        agg.mean(torch.zeros(0, 9, 4))


def test_every_registry_object_is_batched_except_romoa():
    for name in agg.available():
        if name == "romoa":
            continue
        params = RULES.get(name, {})
        if name == "rfa":
            params = {}
        obj = agg.get(name, **params)
        assert obj.batched is True, name


# ------------------------------------------------------------------------- unbatched: bit for bit

OLD = {
    "mean": (agg.mean, old_avg.mean, {}),
    "weighted_mean": (agg.weighted_mean, old_avg.weighted_mean, {"weights": "w"}),
    "fltrust": (agg.fltrust, old_avg.fltrust, {"server_update": "g0"}),
    "median": (agg.median, old_coord.median, {}),
    "trimmed_mean": (agg.trimmed_mean, old_coord.trimmed_mean, {"f": 2}),
    "clipped_median": (agg.clipped_median, old_coord.clipped_median, {"threshold": 2.0}),
    "krum": (agg.krum, old_sel.krum, {"f": 2}),
    "multi_krum": (agg.multi_krum, old_sel.multi_krum, {"f": 1}),
    "bulyan": (agg.bulyan, old_sel.bulyan, {"f": 1}),
    "geometric_median": (agg.geometric_median, old_iter.geometric_median, {"iters": 10}),
    "centered_clipping": (agg.centered_clipping, old_iter.centered_clipping,
                          {"radius": 0.5, "iters": 3, "momentum": "v0"}),
}


REWRITTEN = {"geometric_median"}  # blockwise exact distances replaced torch.cdist's


@pytest.mark.parametrize("name", sorted(OLD))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("n, d, seed", [(9, 7, 0), (12, 300, 1), (17, 5000, 2), (9, 1, 3)])
def test_unbatched_calls_match_the_frozen_implementation_bit_for_bit(name, dtype, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype) * 1e-2
    x[0] *= 1e4  # one huge row (Krum's re-centring, clipping)
    values = {"w": torch.rand(n, generator=g, dtype=dtype),
              "g0": torch.randn(d, generator=g, dtype=dtype),
              "v0": torch.randn(d, generator=g, dtype=dtype) * 1e-2}
    new, old, kw = OLD[name]
    kw = {k: values.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    if name in REWRITTEN:  # a new distance pass: equal to float rounding, not bit for bit
        assert same(new(x, **kw), old(x, **kw), name, dtype)
    else:
        assert torch.equal(new(x, **kw), old(x, **kw))


def test_unbatched_weights_match_the_frozen_implementation():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(11, 50, generator=g)
    pairs = [(agg.selection.krum_rule(2), old_sel.krum_rule(2)),
             (agg.selection.bulyan_rule(1), old_sel.bulyan_rule(1)),
             (agg.coordinate.trimmed_mean_rule(3), old_coord.trimmed_mean_rule(3)),
             (agg.coordinate.median_rule(), old_coord.median_rule())]
    for new, old in pairs:
        (a, wa), (b, wb) = new(x), old(x)
        assert torch.equal(a, b) and torch.equal(wa, wb), new.name
    (a, wa), (b, wb) = agg.iterative.geometric_median_rule()(x), old_iter.geometric_median_rule()(x)
    assert same(a, b, "", x.dtype) and same(wa, wb, "", x.dtype)
    g0 = torch.randn(50, generator=g)
    (a, wa), (b, wb) = agg.averaging.fltrust_rule()(x, batch_params={"server_update": g0}), \
        old_avg.fltrust_rule()(x, server_update=g0)
    assert torch.equal(a, b) and torch.equal(wa, wb)


def test_replica_views_leave_the_batch_state_alone():
    # an attack probing replica b's rule with (n, d) calls sees momentum[b] and changes nothing
    x, _, _ = problem(4, (3,), 9, 5)
    cc = agg.get("centered_clipping")
    cc(x, ctx(5))
    momentum = cc.momentum.clone()
    alone = agg.get("centered_clipping")
    alone(x[1], ctx(5))
    view = cc.replica(1)
    assert same(view(x[1] + 1, ctx(5)), alone(x[1] + 1, ctx(5)), "", F64)
    assert torch.equal(cc.momentum, momentum) and cc.weights.shape == (3, 9)
    krum = agg.get("krum", f=1)
    out = krum(x)
    probe = krum.replica(2)
    assert torch.equal(probe(x[2]), out[2]) and torch.equal(probe.weights, krum.weights[2])
    assert krum.weights.shape == (3, 9)
