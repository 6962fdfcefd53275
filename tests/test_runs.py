"""Runs: validation, bit-identical determinism on CPU, the cache, and the two protocols."""

import json

import pytest
import torch

from fedlib import runs
from fedlib.context import RoundEvent

BASE = dict(dataset="digits", model="digits-cnn", num_clients=6, rounds=6, lr=0.1, batch_size=16,
            eval_every=2, eval_size=200, device="cpu", seed=3)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))


def test_unknown_and_impossible_settings():
    with pytest.raises(ValueError, match="unknown config keys"):
        runs.run(dict(BASE, learning_rate=0.1))
    with pytest.raises(ValueError, match="num_attackers"):
        runs.run(dict(BASE, num_attackers=6))
    with pytest.raises(ValueError, match="protocol"):
        runs.run(dict(BASE, protocol="gossip"))
    with pytest.raises(ValueError, match="needs num_attackers"):
        runs.run(dict(BASE, attack="sign_flip"))


def test_same_config_and_seed_is_bit_identical():
    a = runs.run(BASE, cache=False, progress=False)
    b = runs.run(BASE, cache=False, progress=False)
    assert a.history == b.history
    assert torch.equal(a.theta, b.theta)
    c = runs.run(dict(BASE, seed=4), cache=False, progress=False)
    assert not torch.equal(a.theta, c.theta)
    assert a.history["round"] == [0, 2, 4, 6]
    assert a.last("test_accuracy") > a.history["test_accuracy"][0]


def test_cache_hit_is_identical_and_keyed_by_config(tmp_path):
    first = runs.run(BASE, progress=False)
    assert not first.meta["cached"]
    again = runs.run(BASE, progress=False)
    assert again.meta["cached"] and again.history == first.history
    assert torch.equal(again.theta, first.theta)
    assert runs.config_key(runs.RunConfig.from_dict(BASE)) != \
        runs.config_key(runs.RunConfig.from_dict(dict(BASE, lr=0.2)))
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert [p.name for p in entries] == [first.meta["key"]]


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        runs.run(BASE, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupt_entry_is_recomputed(tmp_path):
    first = runs.run(BASE, progress=False)
    entry = tmp_path / "cache" / first.meta["key"]
    (entry / "result.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable cache entry"):
        again = runs.run(BASE, progress=False)
    assert not again.meta["cached"] and again.history == first.history
    assert json.loads((entry / "result.json").read_text())["history"] == first.history


def test_callbacks_see_every_round():
    events: list[RoundEvent] = []
    runs.run(dict(BASE, clients_per_round=3), callbacks=[events.append], progress=False)
    assert [e.round for e in events] == list(range(6))
    e = events[0]
    assert e.uploads.shape == (3, e.theta_before.numel()) and e.sync
    torch.testing.assert_close(e.theta_after, e.theta_before - e.uploads.mean(0))


def test_romoa_protocol_with_tau_1_equals_fedavg():
    """τ = 1, γ = 1, mean: Romoa's protocol is FedAvg with one local step (Algorithm 1)."""
    sync = runs.run(dict(BASE, local_steps=1), cache=False, progress=False)
    romoa = runs.run(dict(BASE, protocol="romoa", tau=1, moving_rate=1.0), cache=False,
                     progress=False)
    assert torch.equal(sync.theta, romoa.theta)


def test_romoa_protocol_applies_only_at_sync_points():
    events: list[RoundEvent] = []
    runs.run(dict(BASE, protocol="romoa", tau=3), callbacks=[events.append], progress=False)
    assert [e.sync for e in events] == [False, False, True, False, False, True]
    assert torch.equal(events[0].theta_after, events[0].theta_before)
    # the upload is the path since the last sync: it grows over the lookahead iterations
    assert events[1].uploads.norm() > events[0].uploads.norm()
    assert not torch.equal(events[2].theta_after, events[2].theta_before)


def test_history_records_weights():
    r = runs.run(dict(BASE, clients_per_round=3), progress=False)
    assert len(r.history["weights"]) == 6
    w = torch.tensor(r.history["weights"][0])
    assert (w > 0).sum() == 3 and abs(w.sum().item() - 1) < 1e-5
    assert list(r.frame().columns)[:2] == ["test_accuracy", "test_loss"]


def test_run_many_in_worker_processes_equals_one_threaded_runs(tmp_path):
    configs = [BASE, dict(BASE, seed=4), BASE]                  # a repeat runs once
    par = runs.run_many(configs, workers=2, progress=False)
    assert [r.meta["cached"] for r in par] == [False, False, False]
    assert par[0].history == par[2].history
    assert len(list((tmp_path / "cache").iterdir())) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = [runs.run(c, cache=False, progress=False) for c in configs[:2]]
        key = runs.config_key(runs.RunConfig.from_dict(BASE))
    finally:
        torch.set_num_threads(threads)
    for p, s in zip(par, seq):                                  # bit-identical, 1 thread each
        assert p.history == s.history and torch.equal(p.theta, s.theta)
    assert par[0].meta["key"] == key == runs.config_key(runs.RunConfig.from_dict(BASE), threads=1)
    again = runs.run_many(configs, workers=2, progress=False)   # all from the cache
    assert all(r.meta["cached"] for r in again)
    assert [r.history for r in again] == [r.history for r in par]
    assert runs.run_many(configs[:1], workers=1, progress=False)[0].meta["key"] == \
        runs.config_key(runs.RunConfig.from_dict(BASE))
    with pytest.raises(ValueError, match="workers"):
        runs.run_many(configs, workers=0)


def test_run_many_reports_a_failing_worker():
    bad = dict(BASE, dataset="no-such-dataset")
    with pytest.raises(RuntimeError, match="worker process failed(.|\n)*no-such-dataset"):
        runs.run_many([BASE, bad], workers=2, progress=False)


def test_a_failing_run_does_not_stop_its_workers_other_runs(tmp_path):
    bad = dict(BASE, dataset="no-such-dataset", rounds=2)
    later = dict(BASE, rounds=2, seed=9)                        # the same worker, after `bad`
    with pytest.raises(RuntimeError, match="run failed(.|\n)*no-such-dataset"):
        runs.run_many([bad, dict(BASE, rounds=2), later], workers=2, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert runs.run(later, progress=False).meta["cached"]
    finally:
        torch.set_num_threads(threads)
