"""Attacks in L2A's setting: few sampled attackers, one benign row, non-finite input, full runs.

L2A (App. E.1) federates K = 100 clients, M = 20 of them malicious, w = 10 sampled per round,
so a round may hold one attacker (P ≈ 0.27) or a single benign upload. Every attack and
variant must then still craft finite uploads; the NaN/Inf policy of :mod:`fedlib.attacks` is
checked for every attack; and a short run completes for every attack against every rule.
"""

import math
import warnings

import pytest
import torch

from fedlib import aggregators, attacks, engine, runs
from fedlib.context import AttackContext
from fedlib.flat import flatten_module

NAMES = [name for name in attacks.available() if name != "rl"]
"""Every attack but L2A's RL attack ("rl"): it trains a policy, and fedlib.rl's tests cover it."""
BASE = {"tpa": {"source": 1, "poison": 0, "num_targets": 5}}
"""Per-attack parameters the synthetic task needs (two classes: TPA's labels 1 → 0)."""

VARIANTS = [(name, {}) for name in NAMES] + [
    ("upa", {"knowledge": "partial"}), ("upa", {"variant": "krum", "knowledge": "partial"}),
    ("upa", {"space": "model"}), ("lmp_trimmed_mean", {"knowledge": "partial"}),
    ("lmp_trimmed_mean", {"space": "model"}), ("lmp_krum", {"knowledge": "partial"}),
    ("alie", {"knowledge": "partial"}), ("min_max", {"deviation": "std"}),
    ("min_max", {"deviation": "sign"}), ("min_sum", {"deviation": "std"}),
    ("min_sum", {"deviation": "sign"}), ("fltrust_adaptive", {"server_update": "benign_mean"}),
    ("fltrust_adaptive", {"server_update": "own_data"}), ("fltrust_adaptive", {"init": "trim"}),
    ("fltrust_adaptive", {"init": "server"}), ("fltrust_adaptive", {"direction": "sign"}),
    ("gaussian", {"center": "honest"}), ("eb", {"boost": 2.0}), ("label_flip", {"mapping": {0: 1}}),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    cfg = runs.RunConfig.from_dict(dict(dataset="synthetic", model="synthetic-mlp",
                                        num_clients=20, device="cpu", seed=0))
    return runs.build_task(cfg)


@pytest.fixture(scope="module")
def uploads(task):
    """One honest round of all 20 clients from the initial model: (θ, (20, d) deltas)."""
    theta = flatten_module(task.model)
    batches = engine.sample_batches(task, list(range(20)), 0, 1, 16, seed=0)
    return theta, theta.unsqueeze(0) - engine.local_sgd(task, theta.expand(20, -1), batches, 0.05)


def make_ctx(task, theta, honest, benign, aggregator, seed=0, num_clients=None):
    """An AttackContext as the round loop builds it (K = 100, M = 20 federation-wide)."""
    m = honest.shape[0]
    mal_idx = torch.cat([task.clients[i] for i in range(m)])
    g = torch.Generator().manual_seed(seed)
    return AttackContext(
        round=0, theta=theta, spec=task.spec, lr=0.05, batch_size=16, local_steps=1,
        honest_updates=honest, benign_updates=benign,
        num_clients=num_clients or m + benign.shape[0], aggregator=aggregator,
        data=(task.x_train[mal_idx], task.y_train[mal_idx]),
        train=lambda th, x, y, st, lr_, bs, ascent=False: engine.sgd(
            task, th, x, y, st, lr_, bs, generator=g, ascent=ascent),
        forward=task.forward, generator=g, population=100, num_attackers_total=20)


def build(task, name, params):
    att = attacks.get(name, **{**BASE.get(name, {}), **params})
    if callable(getattr(att, "prepare", None)):
        att.prepare(task)
    return att


def rule(name, n=10):
    """The server's rule for n uploads: Krum with the largest f ≤ 1 it accepts (n > 2f + 2;
    fewer than 3 uploads cannot be Krum-aggregated at all: mean), or the mean."""
    if name == "krum" and n >= 3:
        return aggregators.get("krum", f=min(1, (n - 3) // 2))
    return aggregators.get("mean")


RULE_AWARE = ("upa", "lmp_krum", "rule_search")
"""Attacks whose crafting depends on (or queries) the server's rule: also run against Krum."""
CASES = [(name, params, agg) for name, params in VARIANTS
         for agg in (("mean", "krum") if name in RULE_AWARE else ("mean",))]


# ---------------------------------------------------------------- 1 ≤ m ≤ w − 1, one benign row
@pytest.mark.parametrize("benign_rows", [1, 7])
@pytest.mark.parametrize("m", [1, 2, 9])
@pytest.mark.parametrize("name,params,agg", CASES, ids=lambda v: str(v))
def test_every_attack_and_variant_with_few_attackers_and_one_benign_row(
        name, params, m, benign_rows, agg, task, uploads):
    theta, ups = uploads
    honest, benign = ups[:m], ups[m:m + benign_rows]
    server = rule(agg, m + benign_rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)     # finite input: no exclusion warning
        out = build(task, name, params)(make_ctx(task, theta, honest, benign, server))
    assert out.shape == (m, theta.numel()) and bool(torch.isfinite(out).all())
    again = build(task, name, params)(make_ctx(task, theta, honest, benign,
                                               rule(agg, m + benign_rows)))
    assert torch.equal(out, again)


def test_partial_knowledge_estimates_use_only_the_finite_honest_updates(task, uploads):
    """A diverged attacker is left out of μ, σ: the same as with the finite attackers only."""
    theta, ups = uploads
    honest = ups[:3].clone()
    honest[2] = float("inf")
    for name in ("lmp_trimmed_mean", "alie"):
        with pytest.warns(RuntimeWarning, match="honest updates"):
            out = attacks.get(name, knowledge="partial")(
                make_ctx(task, theta, honest, ups[3:9], rule("mean")))
        mu, sigma = ups[:2].mean(0), ups[:2].std(0)
        if name == "alie":
            z = attacks.alie_z(9, 3)
            torch.testing.assert_close(out, (mu - z * sigma).expand(3, -1))
        else:                                   # Fang: within [μ + 3σ, μ + 4σ] against s
            dev = (mu - out) * torch.sign(mu)   # changes −Δ pushed against s = sign(−μ)
            assert bool((dev >= 3 * sigma - 1e-6).all() and (dev <= 4 * sigma + 1e-6).all())


def test_fang_partial_with_one_attacker_sends_its_honest_update(task, uploads):
    """Fang §4.2 partial knowledge with one attacker: σ = 0, so the upload is μ = Δ_honest."""
    theta, ups = uploads
    honest, benign = ups[:1], ups[1:8]
    for name, params in [("lmp_trimmed_mean", {}), ("upa", {}),
                         ("lmp_trimmed_mean", {"space": "model"})]:
        att = attacks.get(name, knowledge="partial", **params)
        out = att(make_ctx(task, theta, honest, benign, rule("mean")))
        torch.testing.assert_close(out, honest, rtol=1e-5, atol=1e-6)
    alie = attacks.get("alie", knowledge="partial")(make_ctx(task, theta, honest, benign,
                                                           rule("mean")))
    torch.testing.assert_close(alie, honest)


def test_lmp_krum_partial_with_one_attacker_keeps_fangs_bound(task, uploads):
    """Two rows (one crafted, one honest) cannot be ranked by Krum: λ = Fang's upper bound."""
    theta, ups = uploads
    att = attacks.get("lmp_krum", knowledge="partial")
    out = att(make_ctx(task, theta, ups[:1], ups[1:8], rule("krum")))
    bound = attacks.krum_lambda_bound(ups[:1], 8, 1)
    assert att.last_lambda == pytest.approx(bound)
    torch.testing.assert_close(out[0], -bound * torch.sign(ups[0]))


def test_min_max_with_one_benign_row_sends_that_row(task, uploads):
    """One benign row: both bounds are 0, so γ = 0 and the upload is μ for every deviation."""
    theta, ups = uploads
    for name in ("min_max", "min_sum"):
        for dev in ("unit_vec", "std", "sign"):
            att = attacks.get(name, deviation=dev)
            out = att(make_ctx(task, theta, ups[:3], ups[3:4], rule("mean")))
            assert att.last_gamma == 0.0
            torch.testing.assert_close(out, ups[3:4].expand(3, -1))


# ---------------------------------------------------------------- NaN/Inf policy
@pytest.mark.parametrize("name,params", [(n, {}) for n in NAMES])
def test_nonfinite_benign_rows_are_dropped_like_the_rules_do(name, params, task, uploads):
    """Same uploads as with the finite benign rows only, and one RuntimeWarning."""
    theta, ups = uploads
    honest, benign = ups[:2], ups[2:9].clone()
    dirty = torch.cat([benign[:3], torch.full_like(benign[:1], float("nan")), benign[3:],
                       benign[:1].clone().fill_(float("inf"))])
    n = 2 + dirty.shape[0]
    clean_out = build(task, name, params)(
        make_ctx(task, theta, honest, benign, rule("mean"), num_clients=n))
    with pytest.warns(RuntimeWarning, match="excluded 2 of 9 benign"):
        dirty_out = build(task, name, params)(
            make_ctx(task, theta, honest, dirty, rule("mean"), num_clients=n))
    assert torch.equal(dirty_out, clean_out) and bool(torch.isfinite(dirty_out).all())


ROW_WISE = ("sign_flip",)
"""Attacks whose i-th upload is a function of the i-th honest update (a NaN one cannot be used)."""


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_honest_updates_are_ignored_and_outputs_never_nonfinite(
        name, task, uploads, monkeypatch):
    theta, ups = uploads
    honest = ups[:3].clone()
    honest[1, 0] = float("nan")
    att = build(task, name, {})
    with pytest.warns(RuntimeWarning, match="1 of the attackers' 3 honest updates"):
        if name in ROW_WISE:
            with pytest.raises(ValueError, match="would contain NaN/Inf"):
                att(make_ctx(task, theta, honest, ups[3:9], rule("mean")))
        else:
            out = att(make_ctx(task, theta, honest, ups[3:9], rule("mean")))
            assert out.shape == (3, theta.numel()) and bool(torch.isfinite(out).all())
    att = build(task, name, {})
    monkeypatch.setattr(att, "craft", lambda ctx: torch.full_like(ctx.honest_updates,
                                                                  float("inf")))
    with pytest.raises(ValueError, match="would contain NaN/Inf"):
        att(make_ctx(task, theta, ups[:2], ups[2:9], rule("mean")))


def test_an_overflowing_attack_raises_instead_of_emitting_inf(task, uploads):
    theta, ups = uploads
    with pytest.raises(ValueError, match="would contain NaN/Inf"):
        attacks.get("sign_flip", scale=1e38)(make_ctx(task, theta, ups[:2] * 1e3, ups[2:9],
                                                      rule("mean")))


# ---------------------------------------------------------------- L2A's default setting, full runs
L2A = dict(dataset="synthetic", model="synthetic-mlp", num_clients=100, clients_per_round=10,
           num_attackers=20, rounds=6, lr=0.05, batch_size=16, eval_every=6, eval_size=100,
           record_weights=False, device="cpu", seed=0)
RULE_PARAMS = {"krum": {"f": 2}, "multi_krum": {"f": 2}, "trimmed_mean": {"f": 2},
               "bulyan": {"f": 1}, "weighted_mean": {"client_weights": [1.0] * 100}}
"""Rule parameters valid for w = 10 uploads (Bulyan: n ≥ 4f + 3)."""
SHORT = {"romoa": 3}
"""Rounds for the slow rules."""


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))


def test_l2a_setting_rounds_sample_one_and_several_attackers(cache_in_tmp):
    """The runs below (seed 0) include rounds with exactly one and with several attackers."""
    counts = []
    runs.run(dict(L2A, attack="ipm", aggregator="median"), cache=False, progress=False,
             callbacks=[lambda ev: counts.append(int(ev.malicious.sum()))])
    assert len(counts) == L2A["rounds"] and 1 in counts and max(counts) >= 2, counts


@pytest.mark.parametrize("rule_name", aggregators.available())
@pytest.mark.parametrize("attack", NAMES)
def test_l2a_setting_run_completes(attack, rule_name, cache_in_tmp):
    """K = 100, M = 20, w = 10 per round on the synthetic set: every attack × every rule."""
    cfg = dict(L2A, attack=attack, attack_params=BASE.get(attack, {}), aggregator=rule_name,
               aggregator_params=RULE_PARAMS.get(rule_name, {}))
    if rule_name in SHORT:
        cfg.update(rounds=SHORT[rule_name], eval_every=SHORT[rule_name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = runs.run(cfg, cache=False, progress=False)
    acc = res.history["test_accuracy"]
    assert len(acc) == 2 and all(math.isfinite(a) for a in acc)
    assert bool(torch.isfinite(res.theta).all())
