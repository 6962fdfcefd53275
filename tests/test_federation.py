"""Federation: stepping equals run(), snapshots resume bit-identically, replicas equal separate
runs, the caller's global RNG is untouched, impossible protocol settings fail early."""

import numpy as np
import pytest
import torch

from fedlib import engine, runs
from fedlib.federation import Federation

BASE = dict(dataset="digits", model="digits-cnn", num_clients=8, clients_per_round=5, rounds=6,
            lr=0.1, batch_size=16, eval_every=3, eval_size=100, device="cpu", seed=3)
ATTACKED = dict(BASE, aggregator="median", attack="sign_flip", num_attackers=2)
LOOKAHEAD = dict(BASE, protocol="romoa", clients_per_round=None, num_clients=5, tau=3,
                 moving_rate=0.5, aggregator="romoa", attack="sign_flip", num_attackers=1)


@pytest.mark.parametrize("config", [BASE, ATTACKED, LOOKAHEAD], ids=["mean", "attacked", "romoa"])
def test_stepping_equals_run(config):
    expected = runs.run(config, cache=False, progress=False)
    fed = Federation.from_config(config)
    for _ in range(config["rounds"]):
        fed.step()
    assert fed.round == config["rounds"]
    assert torch.equal(fed.theta[0], expected.theta)


@pytest.mark.parametrize("config", [
    dict(ATTACKED, aggregator="centered_clipping"),      # stateful rule (server momentum)
    LOOKAHEAD,                                            # protocol + Romoa factors state
], ids=["centered_clipping", "romoa"])
def test_snapshot_restore_continues_bit_identically(config):
    straight = Federation.from_config(config)
    straight.run(8, progress=False)
    fed = Federation.from_config(config)
    fed.run(3, progress=False)
    snap = fed.snapshot()
    fed.run(2, progress=False)                 # wander off, then come back
    fed.restore(snap)
    assert fed.round == 3
    fed.run(5, progress=False)
    assert torch.equal(fed.theta, straight.theta)
    other = Federation.from_config(config)     # a fresh federation resumes from the snapshot
    other.restore(snap)
    other.run(5, progress=False)
    assert torch.equal(other.theta, straight.theta)


@pytest.mark.parametrize("config", [ATTACKED, dict(BASE, aggregator="krum",
                                                   aggregator_params={"f": 1}),
                                    dict(LOOKAHEAD, aggregator="mean")],
                         ids=["median-attacked", "krum", "lookahead-mean"])
def test_replicas_equal_separate_runs(config):
    seeds = [3, 4, 5]
    fed = Federation.from_config(config, seeds=seeds)
    fed.run(5, progress=False)
    for b, s in enumerate(seeds):
        alone = Federation.from_config(dict(config, seed=s))
        alone.run(5, progress=False)
        # vmap over replicas × clients vs one client at a time: float32 round-off only
        torch.testing.assert_close(fed.theta[b], alone.theta[0], rtol=1e-4, atol=1e-5)


def test_sequential_replicas_are_bit_identical_to_separate_runs():
    config = dict(ATTACKED, strategy="sequential")
    fed = Federation.from_config(config, seeds=[3, 7])
    fed.run(4, progress=False)
    for b, s in enumerate([3, 7]):
        alone = Federation.from_config(dict(config, seed=s))
        alone.run(4, progress=False)
        assert torch.equal(fed.theta[b], alone.theta[0])


def test_global_rng_untouched():
    torch.manual_seed(1234)
    np.random.seed(1234)  # noqa: NPY002 (the legacy global generator is what must stay untouched)
    before_t, before_np = torch.get_rng_state(), np.random.get_state()[1].copy()  # noqa: NPY002
    fed = Federation.from_config(ATTACKED, seeds=[0, 1])
    fed.run(3, progress=False)
    runs.run(dict(ATTACKED, rounds=2), cache=False, progress=False)
    assert torch.equal(torch.get_rng_state(), before_t)
    assert np.array_equal(np.random.get_state()[1], before_np)  # noqa: NPY002


def test_next_clients_and_hook_see_the_threat_model():
    fed = Federation.from_config(dict(BASE, num_attackers=2), seeds=[0, 1, 2, 3])
    seen = []

    def hook(ctx):
        seen.append((ctx.replica, ctx.num_malicious, ctx.population, ctx.num_attackers_total))
        assert ctx.theta.shape == (fed.task.spec.dim,)
        return torch.zeros_like(ctx.honest_updates)

    for _ in range(4):
        ids = fed.next_clients()
        out = fed.step(malicious=hook)
        assert torch.equal(out.client_ids, ids)
        mal = out.is_malicious
        assert torch.equal(mal, fed.malicious[ids])
        assert (out.uploads[mal] == 0).all()
    assert seen and all(p == 8 and m_total == 2 for _, _, p, m_total in seen)
    assert all(1 <= m <= 2 for _, m, _, _ in seen)


def test_batched_evaluation_matches_per_replica():
    fed = Federation.from_config(BASE, seeds=[3, 4])
    fed.run(2, progress=False)
    x, y = fed.task.x_test[:200], fed.task.y_test[:200]
    got = fed.evaluate(x, y)
    for b in range(2):
        ref = engine.evaluate(fed.tasks[b], fed.theta[b], x, y)
        assert abs(got["accuracy"][b].item() - ref["accuracy"]) < 1e-6
        assert abs(got["loss"][b].item() - ref["loss"]) < 1e-4


@pytest.mark.parametrize("bad, match", [
    (dict(LOOKAHEAD, aggregator="fltrust", attack="none", num_attackers=0), "server update"),
    (dict(BASE, tau=3), "does not use"),
    (dict(BASE, moving_rate=0.5), "does not use"),
    (dict(LOOKAHEAD, local_steps=2), "does not use"),
    (dict(LOOKAHEAD, clients_per_round=3), "does not use"),
])
def test_impossible_protocol_settings_fail_at_config_time(bad, match):
    with pytest.raises(ValueError, match=match):
        runs.RunConfig.from_dict(bad)


def test_bad_replica_arguments():
    task = runs.build_task(runs.RunConfig.from_dict(BASE))
    with pytest.raises(ValueError, match="seeds"):
        Federation(task, BASE, seeds=[])
    with pytest.raises(ValueError, match="theta0"):
        Federation(task, BASE, seeds=[0, 1], theta0=torch.zeros(3))


def test_run_many_replicas_groups_by_seed_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))
    configs = [dict(ATTACKED, seed=s, rounds=4) for s in (5, 3)] + [dict(BASE, rounds=3)]
    got = runs.run_many(configs, replicas=True, progress=False)
    assert [r.config["seed"] for r in got] == [5, 3, 3]
    assert got[0].meta["replica_seeds"] == [3, 5] and got[2].meta.get("replica_seeds") is None
    for r, c in zip(got, configs):
        alone = runs.run(c, cache=False, progress=False)
        torch.testing.assert_close(r.theta, alone.theta, rtol=1e-4, atol=1e-5)
        assert r.history["round"] == alone.history["round"]
    again = runs.run_many(configs, replicas=True, progress=False)
    assert all(a.meta["cached"] for a in again)
    assert all(torch.equal(a.theta, b.theta) for a, b in zip(again, got))
    # a replica's entry never answers a plain run of the same config
    assert not runs.run(configs[0], progress=False).meta["cached"]


def test_attack_probes_one_replica_rule_without_touching_the_batch_state():
    fed = Federation.from_config(dict(ATTACKED, aggregator="centered_clipping"), seeds=[0, 1, 2])
    fed.run(2, progress=False)
    momentum = fed.aggregators[0].momentum.clone()
    probed = []

    def hook(ctx):
        out = ctx.aggregator(torch.cat([ctx.benign_updates, ctx.honest_updates]))
        probed.append(out.shape)
        return ctx.honest_updates

    fed.step(malicious=hook)
    assert probed and all(s == (fed.task.spec.dim,) for s in probed)
    straight = Federation.from_config(dict(ATTACKED, aggregator="centered_clipping"),
                                      seeds=[0, 1, 2])
    straight.run(2, progress=False)
    assert torch.equal(straight.aggregators[0].momentum, momentum)
    straight.step(malicious=lambda ctx: ctx.honest_updates)
    assert torch.equal(straight.theta, fed.theta)


# --------------------------------------------------------------------------- separate clocks
CLOCKS = dict(ATTACKED, aggregator="centered_clipping", strategy="sequential")


def _clocked(config, seeds):
    fed = Federation.from_config(config, seeds=seeds)
    return Federation(fed.tasks, fed.cfg, seeds, separate_clocks=True)


def test_subset_steps_keep_each_replica_on_its_own_clock():
    """Replica b stepped k_b times (in any interleaving) equals its own federation stepped k_b
    times; a stateful rule (centered clipping's momentum) keeps one state per replica."""
    seeds = [3, 4, 5]
    fed = _clocked(CLOCKS, seeds)
    for rows in ([0, 1, 2], [1], [0, 1], [1], [2, 1]):
        fed.step(rows=rows)
    assert fed.rounds == [2, 5, 2]
    with pytest.raises(RuntimeError, match="clocks differ"):
        _ = fed.round
    for b, s in enumerate(seeds):
        alone = Federation.from_config(dict(CLOCKS, seed=s))
        alone.run(fed.rounds[b], progress=False)
        assert torch.equal(fed.theta[b], alone.theta[0])


def test_reset_replicas_restarts_some_replicas_with_new_seeds():
    fed = _clocked(CLOCKS, [3, 4])
    fed.run(3, progress=False)
    other = fed.theta[1].clone()
    fed.reset_replicas([0], [7])
    assert fed.rounds == [0, 3] and fed.seeds == [7, 4]
    assert torch.equal(fed.theta[1], other) and torch.equal(fed.theta[0], fed.theta0[0])
    fed.step(rows=[0])
    fresh = _clocked(CLOCKS, [3])                   # same θ₀ and data, seed 7 from round 0
    fresh.reset_replicas([0], [7])
    fresh.step()
    assert torch.equal(fed.theta[0], fresh.theta[0])


def test_subsets_need_separate_clocks_and_lookahead_needs_one_clock():
    fed = Federation.from_config(ATTACKED, seeds=[3, 4])
    with pytest.raises(ValueError, match="separate_clocks"):
        fed.step(rows=[0])
    with pytest.raises(ValueError, match="separate_clocks"):
        fed.reset_replicas([0], [1])
    look = Federation.from_config(dict(LOOKAHEAD, attack="none", num_attackers=0), seeds=[3, 4])
    look = Federation(look.tasks, look.cfg, [3, 4], separate_clocks=True)
    look.step(rows=[0])
    with pytest.raises(RuntimeError, match="clocks differ"):
        look.step()


def test_nonfinite_skip_zeroes_broken_uploads_and_keeps_a_finite_model():
    base = Federation.from_config(dict(BASE, num_attackers=2))
    nan = Federation(base.tasks, base.cfg, [3], nonfinite="skip")
    honest = Federation(base.tasks, base.cfg, [3], nonfinite="skip")
    broken = lambda ctx: torch.full_like(ctx.honest_updates, float("nan"))  # noqa: E731
    zero = lambda ctx: torch.zeros_like(ctx.honest_updates)                  # noqa: E731
    nan.step(malicious=broken)
    honest.step(malicious=zero)
    assert torch.equal(nan.theta, honest.theta)              # NaN rows count as zero updates
    theta = nan.theta.clone()
    delta = torch.zeros_like(theta)
    delta[0, 0] = float("inf")                               # an aggregate θ − Aggr cannot take
    assert torch.equal(nan.apply(theta, delta), theta)
    strict = Federation(base.tasks, base.cfg, [3])
    assert not torch.isfinite(strict.apply(theta, delta)).all()
    with pytest.raises(ValueError, match="nonfinite"):
        Federation(base.tasks, base.cfg, [3], nonfinite="ignore")


def test_a_hook_that_ignores_honest_updates_skips_the_attackers_training():
    fed = Federation.from_config(dict(ATTACKED, strategy="sequential"))
    ref = Federation.from_config(dict(ATTACKED, strategy="sequential"))
    calls = []

    def crafted(ctx):
        calls.append(ctx.honest_updates.clone())
        return torch.ones_like(ctx.honest_updates)

    def blind(ctx):
        return torch.ones_like(ctx.honest_updates)

    blind.reads_honest_updates = False
    for _ in range(3):
        a, b = ref.step(malicious=crafted), fed.step(malicious=blind)
        assert torch.equal(a.uploads[~a.is_malicious], b.uploads[~b.is_malicious])
        assert (b.uploads[b.is_malicious] == 1).all()
    assert torch.equal(fed.theta, ref.theta)
    assert any(c.abs().sum() > 0 for c in calls)             # the reference did train them


def test_a_replica_view_of_a_batched_rule_carries_that_replicas_weights():
    from fedlib import aggregators
    agg = aggregators.get("krum", f=1)
    x = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(0))
    agg(x)
    for b in range(3):
        view = agg.replica(b)
        assert torch.equal(view.weights, agg.weights[b])
        view(x[b][:5])                                      # its calls leave the batch alone
        assert agg.weights.shape == (3, 6)
