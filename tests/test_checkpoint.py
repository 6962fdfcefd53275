"""Checkpoints: plain-data state (weights_only), Romoa's and centered clipping's state round-trip,
and a run killed with SIGKILL resumes bit-identically."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedlib import checkpoint, runs
from fedlib.federation import Federation

BASE = dict(dataset="digits", model="digits-cnn", num_clients=4, rounds=8, lr=0.1, batch_size=16,
            eval_every=2, eval_size=100, device="cpu", seed=5, width=0.5)
ROMOA = dict(BASE, protocol="romoa", tau=2, aggregator="romoa", attack="upa", num_attackers=1)
CLIPPING = dict(BASE, aggregator="centered_clipping", attack="ipm", num_attackers=1)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))


def _round_trip(cfg: dict, tmp_path: Path):
    """Step 3 rounds, checkpoint, load into two fresh federations — one without the rule's state."""
    a = Federation.from_config(cfg)
    for _ in range(3):
        a.step()
    path = tmp_path / "state.pt"
    checkpoint.save_checkpoint(path, "k", a, [{"round": [0]}])
    blob = torch.load(path, weights_only=True)                 # no pickled Python objects
    assert blob["key"] == "k" and blob["federation"]["round"] == 3
    state = checkpoint.load_checkpoint(path, "k")
    assert state["histories"] == [{"round": [0]}]
    b, c = Federation.from_config(cfg), Federation.from_config(cfg)
    checkpoint.load_federation_state(b, state["federation"])
    forgetful = dict(state["federation"], aggregators=[{} for _ in a.aggregators])
    checkpoint.load_federation_state(c, forgetful)
    return a, b, c


def _step_all(feds, rounds=3):
    for _ in range(rounds):
        for f in feds:
            f.step()


def test_romoa_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    a, b, c = _round_trip(ROMOA, tmp_path)
    ra, rb = a.aggregators[0], b.aggregators[0]
    assert ra.factors is not None and torch.equal(ra.factors, rb.factors)
    assert ra.iteration == rb.iteration == 3
    assert torch.equal(a.protocol_state["states"], b.protocol_state["states"])
    _step_all([a, b, c])
    assert torch.equal(a.theta, b.theta)
    assert json.dumps(ra.report()) == json.dumps(rb.report())
    # without the sanitizing factors F the continuation differs: the state is what matters
    assert not torch.equal(a.theta, c.theta)


def test_centered_clipping_momentum_round_trips(tmp_path):
    a, b, c = _round_trip(CLIPPING, tmp_path)
    assert a.aggregators[0].momentum is not None
    assert torch.equal(a.aggregators[0].momentum, b.aggregators[0].momentum)
    _step_all([a, b, c])
    assert torch.equal(a.theta, b.theta)
    assert not torch.equal(a.theta, c.theta)


def test_plain_state_refuses_foreign_objects_and_restores_nested_ones():
    class Foreign:
        pass

    class Holder:
        pass

    h = Holder()
    h.x = Foreign()
    with pytest.raises(TypeError, match="checkpoint"):
        checkpoint.plain_state(h)
    h.x = [slice(0, 3), (1, 2.5), {"a": torch.ones(2)}, None]
    h.f = len                                                   # functions are not state
    state = checkpoint.plain_state(h)
    assert "f" not in state
    fresh = Holder()
    checkpoint.load_plain_state(fresh, state)
    assert fresh.x[:2] == [slice(0, 3), (1, 2.5)] and torch.equal(fresh.x[2]["a"], torch.ones(2))


DIE_AT_ROUND_5 = """
import os, signal, sys, json, torch
from fedlib import federation, runs
torch.set_num_threads(int(sys.argv[1]))
step = federation.Federation.step
def dying_step(self, *a, **k):
    if self.round == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *a, **k)
federation.Federation.step = dying_step
"""
KILLER = DIE_AT_ROUND_5 + "runs.run(json.loads(sys.argv[2]), checkpoint_every=2, progress=False)\n"


def test_run_killed_mid_run_resumes_bit_identical(tmp_path, capsys):
    cfg = ROMOA
    proc = subprocess.run([sys.executable, "-c", KILLER, str(torch.get_num_threads()),
                           json.dumps(cfg)], env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    key = runs.config_key(runs.RunConfig.from_dict(cfg))
    partial = runs.partial_path(tmp_path / "cache" / key)
    assert partial.exists() and not (tmp_path / "cache" / key).exists()
    assert torch.load(partial, weights_only=True)["federation"]["round"] == 4
    resumed = runs.run(cfg, checkpoint_every=2, progress=True)
    assert "4/8" in capsys.readouterr().err                    # progress shows the resumed round
    assert resumed.meta["resumed_from"] == 4 and not partial.parent.exists()
    whole = runs.run(cfg, cache=False, progress=False)
    assert whole.meta["resumed_from"] == 0
    assert torch.equal(resumed.theta, whole.theta)
    assert json.dumps(resumed.history) == json.dumps(whole.history)   # NaN-safe comparison
    assert runs.run(cfg, progress=False).meta["cached"]


def test_checkpoints_are_written_on_schedule_and_removed_at_the_end(tmp_path, monkeypatch):
    saved = []
    real = checkpoint.save_checkpoint

    def spy(path, key, fed, histories):
        saved.append(fed.round)
        real(path, key, fed, histories)

    monkeypatch.setattr(runs, "save_checkpoint", spy)
    r = runs.run(CLIPPING, checkpoint_every=3, progress=False)
    assert saved == [3, 6]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [r.meta["key"]]
    runs.run(dict(CLIPPING, seed=6), progress=False)            # default: every 100 rounds
    assert saved == [3, 6]
    with pytest.raises(ValueError, match="checkpoint_every"):
        runs.run(CLIPPING, checkpoint_every=0)


def test_corrupt_checkpoint_is_ignored_with_a_warning(tmp_path):
    key = runs.config_key(runs.RunConfig.from_dict(CLIPPING))
    partial = runs.partial_path(tmp_path / "cache" / key)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="unreadable checkpoint"):
        r = runs.run(CLIPPING, checkpoint_every=2, progress=False)
    assert r.meta["resumed_from"] == 0 and not partial.parent.exists()
    fresh = runs.run(CLIPPING, cache=False, progress=False)
    assert torch.equal(r.theta, fresh.theta)


def test_checkpoint_of_another_shape_is_ignored_with_a_warning(tmp_path):
    key = runs.config_key(runs.RunConfig.from_dict(CLIPPING))
    other = Federation.from_config(dict(CLIPPING, width=0.25))   # θ of another size, same key
    checkpoint.save_checkpoint(runs.partial_path(tmp_path / "cache" / key), key, other, [{}])
    with pytest.warns(RuntimeWarning, match="does not fit this run"):
        r = runs.run(CLIPPING, checkpoint_every=2, progress=False)
    assert r.meta["resumed_from"] == 0 and r.history["round"] == [0, 2, 4, 6, 8]


BATCH_KILLER = DIE_AT_ROUND_5 + (
    "runs.run_many(json.loads(sys.argv[2]), replicas=True, checkpoint_every=2, progress=False)\n")


def test_replica_batch_killed_mid_run_resumes_bit_identical(tmp_path, capsys):
    cfgs = [ROMOA, dict(ROMOA, seed=6)]
    proc = subprocess.run([sys.executable, "-c", BATCH_KILLER, str(torch.get_num_threads()),
                           json.dumps(cfgs)], env=dict(os.environ), capture_output=True,
                          text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    keys = [runs.config_key(runs.RunConfig.from_dict(c), replica_seeds=[5, 6]) for c in cfgs]
    partial = runs.partial_path(tmp_path / "cache" / keys[0])    # beside the first replica
    assert partial.exists() and not any((tmp_path / "cache" / k).exists() for k in keys)
    blob = checkpoint.load_checkpoint(partial, keys[0])
    assert blob["federation"]["round"] == 4 and blob["federation"]["seeds"] == [5, 6]
    assert len(blob["histories"]) == 2                          # every replica's history so far
    resumed = runs.run_many(cfgs, replicas=True, checkpoint_every=2, progress=True)
    assert "4/8" in capsys.readouterr().err                    # progress shows the resumed round
    assert [r.meta["resumed_from"] for r in resumed] == [4, 4]
    assert not partial.parent.exists()                          # finishing removes it
    whole = runs.execute_replicas(cfgs, progress=False)
    for r, w in zip(resumed, whole):
        assert w.meta["resumed_from"] == 0
        assert torch.equal(r.theta, w.theta)
        assert json.dumps(r.history) == json.dumps(w.history)   # NaN-safe comparison
    again = runs.run_many(cfgs, replicas=True, progress=False)
    assert all(r.meta["cached"] for r in again)
    assert [json.dumps(r.history) for r in again] == [json.dumps(w.history) for w in whole]


def test_replica_batch_checkpoints_on_schedule(tmp_path, monkeypatch):
    saved = []
    real = checkpoint.save_checkpoint

    def spy(path, key, fed, histories):
        saved.append((fed.round, len(histories)))
        real(path, key, fed, histories)

    monkeypatch.setattr(runs, "save_checkpoint", spy)
    cfgs = [CLIPPING, dict(CLIPPING, seed=6), dict(CLIPPING, seed=7)]
    out = runs.run_many(cfgs, replicas=True, checkpoint_every=3, progress=False)
    assert saved == [(3, 3), (6, 3)]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == \
        sorted(r.meta["key"] for r in out)
    with pytest.raises(ValueError, match="checkpoint_every"):
        runs.run_many(cfgs, replicas=True, checkpoint_every=0)
