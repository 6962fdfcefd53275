"""L2A's online RL attack (``attacks.get("rl")``): schedule, phases, variants, threat model."""

import dataclasses
import types

import numpy as np
import pytest
import torch

from fedlib import aggregators, attacks, runs
from fedlib.context import AttackContext
from fedlib.federation import Federation
from fedlib.inversion import DistributionLearner, attacker_samples
from fedlib.rl import online
from fedlib.rl.online import OnlineRL, scheduled_steps

SYN = dict(dataset="synthetic", model="synthetic-mlp", num_clients=20, clients_per_round=5,
           num_attackers=4, lr=0.5, batch_size=32, rounds=12, eval_every=6, eval_size=500,
           device="cpu", seed=1)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))


pytestmark = pytest.mark.usefixtures("one_thread")


class FakePolicy:
    """A policy stand-in: a fixed action; records every observation it was shown."""

    def __init__(self, action, num_timesteps):
        self.action = np.asarray(action, dtype=np.float32)
        self.num_timesteps = num_timesteps
        self.seen = []

    def act(self, obs):
        self.seen.append(obs)
        return self.action


class FakeTrainer:
    """Records (steps, |P̃|, init) per refresh and returns a FakePolicy."""

    def __init__(self, action=(1.0, 1.0)):
        self.calls, self.action = [], action

    def __call__(self, config, steps, seed, init, **kw):
        self.calls.append({"steps": steps, "data": len(config.data[0]), "init": init,
                           "config": config, "seed": seed, **kw})
        done = steps + (init.num_timesteps if init is not None else 0)
        return FakePolicy(self.action, done)


def _rl(trainer, **params):
    base = dict(distribution="own", own_samples=100, attack_start=4, refresh_every=2,
                refresh_steps=10, policy_steps=30, horizon=10, trainer=trainer)
    base.update(params)
    return attacks.get("rl", **base)


class NoBenign:
    """An AttackContext view that raises if the benign updates are read (threat model)."""

    def __init__(self, ctx):
        object.__setattr__(self, "_ctx", ctx)

    def __getattr__(self, item):
        if item == "benign_updates":
            raise AssertionError("the RL attack read ctx.benign_updates")
        return getattr(self._ctx, item)


def test_schedule_is_the_authors():
    assert scheduled_steps(0, 5, 1000, 80_000) == 0
    assert scheduled_steps(4, 5, 1000, 80_000) == 0
    assert scheduled_steps(5, 5, 1000, 80_000) == 1000
    assert scheduled_steps(100, 5, 1000, 80_000) == 20_000
    assert scheduled_steps(400, 5, 1000, 80_000) == 80_000
    assert scheduled_steps(999, 5, 1000, 80_000) == 80_000
    assert scheduled_steps(0, 5, 1000, 8_000, initial=8_000) == 8_000
    with pytest.raises(ValueError):
        scheduled_steps(-1, 5, 1000, 10)


def test_registered_and_bad_parameters_rejected():
    assert "rl" in attacks.available()
    assert isinstance(attacks.get("rl"), OnlineRL)
    for bad in (dict(distribution="dreamed"), dict(root="guessed"), dict(samples=0),
                dict(refresh_every=0), dict(policy_lr=-1.0), dict(env={"lr": 0.1}),
                dict(policy_steps=0), dict(trainer=3), dict(holdout_size=0)):
        with pytest.raises(ValueError):
            attacks.get("rl", **bad)


def test_phases_schedule_and_execution_in_a_real_run():
    trainer = FakeTrainer(action=(1.0, 1.0))             # γ = 10, E = 20 (Krum preset)
    attack = _rl(trainer)
    # γ = 10 under Krum can blow the model up once two attackers are sampled together; the
    # server survives that (``nonfinite="skip"``) so that the schedule is checked on every round
    fed = Federation.from_config(dict(SYN, aggregator="krum", aggregator_params={"f": 1}),
                                 nonfinite="skip")
    results = []
    for _ in range(SYN["rounds"]):
        ids = fed.next_clients()[0]
        out = fed.step(malicious=lambda ctx: attack(NoBenign(ctx)))
        results.append((int(out.round), int(fed.malicious[ids].sum()), out))
    rounds_called = [t for t, m, _ in results if m > 0]
    # policy refreshes follow min(⌊t/2⌋·10, 30) at the rounds the attack was called
    assert sum(c["steps"] for c in trainer.calls) == attack.trained
    for row in attack.refreshes:
        assert row["total"] == scheduled_steps(row["round"], 2, 10, 30)
    assert attack.trained == scheduled_steps(max(rounds_called), 2, 10, 30)
    assert trainer.calls[0]["init"] is None
    assert all(c["init"] is not None for c in trainer.calls[1:])
    cfg = trainer.calls[0]["config"]
    assert cfg.aggregator == "krum" and cfg.aggregator_params == {"f": 1}   # the server's f
    assert (cfg.num_clients, cfg.clients_per_round, cfg.num_attackers) == (20, 5, 4)
    assert cfg.lr == 0.5 and cfg.batch_size == 32 and cfg.horizon == 10
    first = next(out for _, m, out in results if m > 0)
    assert torch.equal(cfg.theta0, first.theta_shared[0])   # episodes start at the first model seen
    assert len(cfg.data[0]) == 100                       # RL w/o DL: 100 own samples
    # before attack_start the malicious rows are the honest updates; afterwards crafted
    for t, m, out in results:
        if m == 0:
            continue
        mal = out.uploads[0][out.is_malicious[0]]
        if t < 4:
            assert not any(r["round"] == t for r in attack.log)
        else:
            row = next(r for r in attack.log if r["round"] == t)
            k = 20 - int(row["E"])                    # App. E.1's NaN fallback: (0.5γ, E − 1)
            assert row["m"] == m and 0 <= k < 20 and row["gamma"] == pytest.approx(10.0 * 0.5 ** k)
            assert torch.equal(mal, mal[:1].expand_as(mal))          # one shared update
    executed = [r for r in attack.log if r["action"] is not None]
    assert executed, "the attack never executed"
    policy = attack.policy
    obs = policy.seen[0]
    assert set(obs) == {"last_layer", "attackers", "progress"}
    assert obs["last_layer"].shape == (6,) and np.abs(obs["last_layer"]).max() <= 1.0
    assert 1 <= int(obs["attackers"]) <= 5


def test_holdout_size_caps_the_rewards_held_out_data():
    sizes = {}
    for cap in (None, 30):
        trainer = FakeTrainer(action=(0.0, 0.0))
        attack = _rl(trainer, holdout_size=cap)
        fed = Federation.from_config(dict(SYN, aggregator="mean"))
        for _ in range(SYN["rounds"]):
            if trainer.calls:
                break
            fed.step(malicious=attack)
        cfg = trainer.calls[0]["config"]
        sizes[cap] = len(cfg.holdout[0])
        k = sizes[cap]
        assert torch.equal(cfg.holdout[0], cfg.data[0][:k])     # the first rows of the own samples
        assert torch.equal(cfg.holdout[1], cfg.data[1][:k])
        assert len(cfg.data[0]) == 100                          # the simulator's data is not capped
    assert sizes == {None: 100, 30: 30}


def test_craft_matches_the_simulator_for_the_same_action():
    trainer = FakeTrainer(action=(0.2, -0.4))
    attack = _rl(trainer, attack_start=0, initial_steps=10)
    fed = Federation.from_config(dict(SYN, aggregator="mean"))
    while True:
        ids = fed.next_clients()[0]
        out = fed.step(malicious=attack)
        if fed.malicious[ids].any():
            break
    row = attack.log[-1]
    sim = attack._sim
    assert row["gamma"] == pytest.approx(6.0) and row["E"] == 6
    sim.theta[0] = out.theta_shared[0]
    sim.round[0] = int(out.round)
    again, _ = sim.craft([0], torch.tensor([[0.2, -0.4]]))
    mal = out.uploads[0][out.is_malicious[0]]
    assert torch.allclose(mal[0], again[0])


def test_runs_run_is_deterministic_and_rl_raises_the_loss():
    cfg = dict(SYN, aggregator="mean", rounds=16, attack="rl",
               attack_params=dict(distribution="own", own_samples=200, attack_start=4,
                                  refresh_every=2, refresh_steps=10, policy_steps=20,
                                  horizon=10))
    fake = FakeTrainer(action=(-0.2, -0.8))               # γ = 4, E = 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(online, "train_refresh", fake)
        a = runs.run(cfg, cache=False, progress=False)
        b = runs.run(cfg, cache=False, progress=False)
        clean = runs.run(dict(cfg, attack="none", num_attackers=4, attack_params={}),
                         cache=False, progress=False)
    assert torch.equal(a.theta, b.theta) and a.history == b.history
    assert a.last("test_loss") > clean.last("test_loss") + 0.2


RL_KILLED = dict(SYN, aggregator="krum", aggregator_params={"f": 1}, rounds=8, seed=2,
                 attack="rl",
                 attack_params=dict(distribution="own", own_samples=100, attack_start=2,
                                    refresh_every=2, refresh_steps=10, policy_steps=40,
                                    horizon=10, algo_kwargs={"learning_starts": 5,
                                                             "batch_size": 8}))
KILLER = """
import os, signal, sys, json, torch
from fedlib import federation, runs
torch.set_num_threads(1)
save = runs.save_checkpoint
def save_then_die(path, key, fed, histories):   # only the run's federation (not the simulator's)
    save(path, key, fed, histories)
    def dying_step(*a, **k):
        if fed.round == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return federation.Federation.step(fed, *a, **k)
    fed.step = dying_step
runs.save_checkpoint = save_then_die
runs.run(json.loads(sys.argv[1]), checkpoint_every=2, progress=False)
"""


def test_rl_run_killed_mid_run_resumes_bit_identical(tmp_path):
    """Real TD3 policy, its refreshes and the attack log survive SIGKILL: same run, bit for bit."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import warnings

    from fedlib import checkpoint
    cfg = RL_KILLED
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(cfg)],
                          env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "cannot be checkpointed" not in proc.stderr
    key = runs.config_key(runs.RunConfig.from_dict(cfg))
    partial = runs.partial_path(tmp_path / "cache" / key)
    blob = torch.load(partial, weights_only=True)              # no pickled Python objects
    assert blob["federation"]["round"] == 4
    stored = blob["federation"]["attacks"][0]["attack"]["state"]
    state = checkpoint.decode(stored[checkpoint.STATE_DICT])    # OnlineRL.state_dict()
    assert state["trained"] > 0 and state["policy"]["algo"] == "td3"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)          # no "not checkpointed" warning
        resumed = runs.run(cfg, checkpoint_every=2, progress=False)
    assert resumed.meta["resumed_from"] == 4 and not partial.parent.exists()
    whole = Federation.from_config(cfg)
    rec = runs.recorders(runs.RunConfig.from_dict(cfg), whole)
    for r in rec:
        r.start(whole)
    whole.run(cfg["rounds"], observers=rec, progress=False)
    assert torch.equal(resumed.theta, whole.theta[0])
    assert json.dumps(resumed.history) == json.dumps(rec[0].history)
    attack = whole.attacks[0].attack
    # after the checkpoint (round 4) the restored policy was refreshed and executed
    assert any(r["round"] > 4 for r in attack.refreshes)
    assert any(r["round"] > 4 and r["action"] is not None for r in attack.log)


def test_rl_state_round_trips_mid_distribution_learning(tmp_path):
    """Checkpoint while P̃ is being learned (learner networks, ḡ, reconstructions) and after a
    refresh; the restored attack continues exactly as the uninterrupted one."""
    from fedlib import checkpoint
    cfg = dict(dataset="digits", model="digits-cnn", num_clients=10, clients_per_round=3,
               num_attackers=2, lr=0.1, batch_size=16, rounds=9, eval_every=9, eval_size=100,
               device="cpu", seed=2, attack="rl",
               attack_params=dict(distribution="learned", samples=20, learn_rounds=6,
                                  attack_start=4, refresh_every=2, refresh_steps=5,
                                  policy_steps=20, horizon=5, seed=4,
                                  inversion=dict(iterations=3, batch_size=2, denoiser_epochs=1),
                                  algo_kwargs={"learning_starts": 0, "batch_size": 4,
                                               "policy_kwargs": {"net_arch": [8]}}))
    a = Federation.from_config(cfg)
    while not (a.attacks[0].attack.learner is not None and a.attacks[0].attack.learner.raw
               and a.attacks[0].attack.policy is not None):
        a.step()
    cut = a.round
    assert cut < 6                                             # still learning P̃
    path = tmp_path / "state.pt"
    checkpoint.save_checkpoint(path, "k", a, [{}])
    before = torch.get_rng_state()
    b = Federation.from_config(cfg)
    checkpoint.load_federation_state(b, checkpoint.load_checkpoint(path, "k")["federation"])
    assert torch.equal(before, torch.get_rng_state())          # the caller's RNG untouched
    ra, rb = a.attacks[0].attack, b.attacks[0].attack
    assert rb.learner is not ra.learner and len(rb.learner) == len(ra.learner)
    assert rb._sim is not None and torch.equal(rb._sim.x, ra._sim.x)
    a.run(cfg["rounds"] - cut, progress=False)
    b.run(cfg["rounds"] - cut, progress=False)
    assert torch.equal(a.theta, b.theta)
    assert ra.log == rb.log and ra.refreshes == rb.refreshes and ra.trained == rb.trained
    assert any(r["action"] is not None for r in rb.log)
    assert [r["round"] for r in ra.learner.log] == [r["round"] for r in rb.learner.log]
    assert all(torch.equal(x, y) for x, y in zip(ra.learner.denoised, rb.learner.denoised))
    for (k, v), w in zip(ra.policy.policy.state_dict().items(),
                         rb.policy.policy.state_dict().values()):
        assert torch.equal(v, w), k


def test_rl_attack_with_a_foreign_policy_is_not_checkpointed():
    """A trainer returning a policy fedlib cannot store: the run says so and runs on."""
    attack = _rl(FakeTrainer(), attack_start=100, initial_steps=10)
    fed = Federation.from_config(dict(SYN, aggregator="mean"))
    while attack.policy is None:
        fed.step(malicious=attack)
    from fedlib import checkpoint
    with pytest.raises(TypeError, match="FakePolicy in a checkpoint"):
        checkpoint.plain_state(attack)


def test_unsimulated_rule_warns_and_counts_come_from_the_context():
    name, params = online.simulated_rule(aggregators.get("clipped_median", threshold=3.0))
    assert (name, params) == ("clipped_median", {"threshold": 3.0})
    assert online.simulated_rule(aggregators.get("krum", f=1)) == ("krum", {"f": 1})
    assert online.simulated_rule(aggregators.get("rfa"))[0] == "geometric_median"
    with pytest.warns(RuntimeWarning, match="simulates the mean"):
        assert online.simulated_rule(aggregators.get("weighted_mean", client_weights=[1.0, 2.0])) \
            == ("mean", {})
    attack = _rl(FakeTrainer())
    ctx = AttackContext(round=0, theta=torch.zeros(28), spec=None, lr=0.1, batch_size=8,
                        local_steps=1, honest_updates=torch.zeros(1, 28),
                        benign_updates=torch.zeros(2, 28), num_clients=3,
                        aggregator=aggregators.get("mean"),
                        data=(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)),
                        train=None, forward=None)
    from fedlib.flat import ParamSpec
    from fedlib import models
    ctx = dataclasses.replace(ctx, spec=ParamSpec.of(models.build("synthetic-mlp")))
    with pytest.raises(ValueError, match="counts"):
        attack(ctx)


def test_learned_distribution_equals_the_round_callback_learner():
    """Phase 1 inside the attack (catching up rounds without attackers) = the callback learner."""
    cfg = dict(dataset="digits", model="digits-cnn", num_clients=10, clients_per_round=3,
               num_attackers=2, lr=0.1, batch_size=16, rounds=9, eval_every=9, eval_size=100,
               device="cpu", seed=2)
    inv = dict(iterations=3, batch_size=2, denoiser_epochs=1)
    fake = FakeTrainer()
    params = dict(distribution="learned", samples=20, learn_rounds=7, attack_start=100,
                  refresh_every=3, refresh_steps=5, policy_steps=10, horizon=5,
                  inversion=inv, seed=4)
    task = runs.build_task(runs.RunConfig.from_dict(cfg))
    x_real, y_real = attacker_samples(task, 2, m=20, seed=4)
    import fedlib.models as fm
    ref = DistributionLearner(fm.build("digits-cnn"), x_real, y_real, rounds=7, seed=4, **inv)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(online, "train_refresh", fake)
        fed = Federation.from_config(dict(cfg, attack="rl", attack_params=params))
        attack = fed.attacks[0].attack
        for _ in range(cfg["rounds"]):
            out = fed.step()
            ref.on_round(out.event(0, cfg["lr"], None))
    assert torch.equal(attack.x_real, x_real) and torch.equal(attack.y_real, y_real)
    xa, ya = attack.learner.dataset()
    xr, yr = ref.dataset()
    assert len(xa) > 20 and torch.equal(xa, xr) and torch.equal(ya, yr)
    assert [r["round"] for r in attack.learner.log] == [r["round"] for r in ref.log]
    # each refresh's simulator holds P̃ as it was then: it grows with the reconstructions
    sizes = [c["data"] for c in fake.calls]
    assert sizes == sorted(sizes) and sizes[-1] > 20
    assert [len(c["config"].data[0]) for c in fake.calls] == sizes


def test_unlabeled_variant_uses_only_reconstructions():
    cfg = dict(dataset="digits", model="digits-cnn", num_clients=10, clients_per_round=3,
               num_attackers=2, lr=0.1, batch_size=16, rounds=6, eval_every=6, eval_size=100,
               device="cpu", seed=2)
    fake = FakeTrainer()
    params = dict(distribution="unlabeled", samples=20, learn_rounds=6, attack_start=100,
                  refresh_every=1, refresh_steps=5, policy_steps=50, horizon=5,
                  inversion=dict(iterations=2, batch_size=2, denoiser_epochs=1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(online, "train_refresh", fake)
        fed = Federation.from_config(dict(cfg, attack="rl", attack_params=params))
        attack = fed.attacks[0].attack
        for _ in range(cfg["rounds"]):
            fed.step()
    x, y = attack.learned_distribution()
    rec_x, rec_y = attack.learner.reconstructions()
    assert len(x) > 0 and torch.equal(x, rec_x) and torch.equal(y, rec_y)
    assert all(c["data"] < 20 + len(rec_x) for c in fake.calls)   # real samples never in P̃
    for c in fake.calls:
        assert torch.equal(c["config"].holdout[0], c["config"].data[0])


def test_fltrust_root_known_or_sampled():
    cfg = dict(SYN, aggregator="fltrust", root_size=20, rounds=6)
    for root in ("known", "sampled"):
        fake = FakeTrainer(action=(0.0, 0.5))
        params = dict(distribution="own", own_samples=200, attack_start=2, refresh_every=1,
                      refresh_steps=5, policy_steps=10, horizon=10, root=root, root_size=20,
                      seed=SYN["seed"])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(online, "train_refresh", fake)
            fed = Federation.from_config(dict(cfg, attack="rl", attack_params=params))
            for _ in range(cfg["rounds"]):
                fed.step()
        conf = fake.calls[0]["config"]
        assert conf.action == "E_lambda" and conf.horizon == 10
        task = fed.tasks[0]
        from fedlib import data as fd
        idx = fd.root_set(task.y_train.numpy(), 20, 0.5, seed=SYN["seed"])
        same = torch.equal(conf.root[0], task.x_train[torch.as_tensor(idx)])
        assert same == (root == "known")
    fed_attack = attacks.get("rl", distribution="own", root="known", trainer=FakeTrainer())
    fed2 = Federation.from_config(dict(cfg, rounds=2))
    with pytest.raises(ValueError, match="prepare"):
        for _ in range(4):
            fed2.step(malicious=fed_attack)


def test_integration_real_td3_on_the_synthetic_set():
    """The real policy learning (stable-baselines3 TD3) inside a real run, tiny counts."""
    cfg = dict(SYN, aggregator="krum", aggregator_params={"f": 1}, rounds=8,
               attack="rl", attack_params=dict(distribution="own", own_samples=300,
                                               attack_start=3, refresh_every=3,
                                               refresh_steps=60, policy_steps=120, horizon=15,
                                               algo_kwargs={"learning_starts": 20,
                                                            "batch_size": 32,
                                                            "buffer_size": 1000}))
    fed = Federation.from_config(cfg)
    fed.run(cfg["rounds"], progress=False)
    attack = fed.attacks[0].attack
    last = max(r["round"] for r in attack.log)
    assert attack.trained == scheduled_steps(last, 3, 60, 120) >= 60
    assert attack.policy.num_timesteps == attack.trained
    assert all(r["steps"] == 60 for r in attack.refreshes)
    executed = [r for r in attack.log if r["action"] is not None]
    assert executed
    for r in executed:
        assert 0.0 <= r["gamma"] <= 10.0 and 0 <= r["E"] <= 20
        assert all(-1.0 <= a <= 1.0 for a in r["action"])
    assert torch.isfinite(fed.theta).all()


def test_a_warm_started_refresh_learns_from_its_first_step(monkeypatch):
    from fedlib.rl import online, train
    seen = []

    def fake(env_config, steps, seed, **kw):
        seen.append(kw.get("algo_kwargs"))
        return types.SimpleNamespace(policy=None, num_timesteps=steps)

    monkeypatch.setattr(train, "train_policy", fake)
    online.train_refresh(None, steps=10, seed=0)                       # the first policy
    online.train_refresh(None, steps=10, seed=0, init=types.SimpleNamespace(num_timesteps=10))
    online.train_refresh(None, steps=10, seed=0, init=types.SimpleNamespace(num_timesteps=20),
                         algo_kwargs={"learning_starts": 5})
    assert seen == [None, {"learning_starts": 0}, {"learning_starts": 5}]
