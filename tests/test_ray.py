"""The Ray backend of run_many: equal to the local backend bit for bit, failures reported, the
environment switch, and the error without Ray."""

import sys

import pytest
import ray
import torch

from fedlib import parallel, runs

BASE = dict(dataset="digits", model="digits-cnn", num_clients=6, rounds=3, lr=0.1, batch_size=16,
            eval_every=1, eval_size=100, device="cpu", seed=0, width=0.5)


@pytest.fixture(scope="module")
def local_ray():
    for attempt in range(2):                     # a raylet can miss its start-up deadline
        try:                                     # on a heavily loaded machine: try once more
            ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("FEDLIB_BACKEND", raising=False)


def test_ray_equals_local_bit_for_bit_in_input_order(local_ray, tmp_path, monkeypatch):
    configs = [BASE, dict(BASE, seed=1, aggregator="median"), BASE]    # a repeat runs once
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "ray"))
    on_ray = runs.run_many(configs, backend="ray", num_cpus=1, progress=False)
    assert [r.meta["cached"] for r in on_ray] == [False, False, False]
    assert len(list((tmp_path / "ray").iterdir())) == 2               # both in the shared cache
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "local"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                 # the thread count of the Ray tasks
    try:
        local = runs.run_many(configs, backend="local", progress=False)
    finally:
        torch.set_num_threads(threads)
    for r, s in zip(on_ray, local):
        assert r.config == s.config and r.meta["key"] == s.meta["key"]
        assert r.history == s.history and torch.equal(r.theta, s.theta)
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "ray"))
    again = runs.run_many(configs, backend="ray", progress=False)     # from the cache
    assert all(r.meta["cached"] for r in again)
    assert [r.history for r in again] == [r.history for r in on_ray]


def test_a_failing_ray_task_names_its_config_and_the_others_finish(local_ray, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))
    bad = dict(BASE, dataset="no-such-dataset")
    with pytest.raises(parallel.RunFailure, match="1 of 2 runs failed(.|\n)*no-such-dataset"
                       "(.|\n)*Traceback") as info:
        runs.run_many([bad, dict(BASE, seed=2)], backend="ray", progress=False)
    assert [c["dataset"] for c, _ in info.value.failures] == ["no-such-dataset"]
    again = runs.run_many([dict(BASE, seed=2)], backend="ray", progress=False)
    assert again[0].meta["cached"]


def test_environment_picks_the_backend(monkeypatch):
    assert parallel.resolve_backend(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert parallel.resolve_backend(None) == "ray"
    assert parallel.resolve_backend("local") == "local"
    monkeypatch.setenv("FEDLIB_BACKEND", "local")
    assert parallel.resolve_backend(None) == "local"
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("FEDLIB_BACKEND", "ray")
    assert parallel.resolve_backend(None) == "ray"
    seen = []
    monkeypatch.setattr(runs, "_run_on_ray", lambda cfgs, *a: seen.append(len(cfgs)) or [])
    runs.run_many([BASE, BASE], workers=2)                   # what a notebook's call does
    assert seen == [2]
    with pytest.raises(ValueError, match="backend"):
        runs.run_many([BASE], backend="dask")


def test_ray_backend_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)            # import ray -> ImportError
    with pytest.raises(ImportError, match=r"fedlib-poisoning\[ray\]"):
        runs.run_many([BASE], backend="ray", progress=False)
