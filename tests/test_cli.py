"""`python -m fedlib run / sweep`: YAML in, metrics and CSV out; bad input fails before any run."""

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from fedlib import cli, runs

BASE = dict(dataset="digits", model="digits-cnn", num_clients=6, rounds=2, lr=0.1, batch_size=16,
            eval_every=1, eval_size=100, device="cpu", seed=0, width=0.5)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("FEDLIB_BACKEND", raising=False)


def _write(path, blob):
    path.write_text(yaml.safe_dump(blob))
    return str(path)


def _ran(tmp_path) -> list:
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_run_prints_final_metrics_and_writes_the_history(tmp_path, capsys):
    path = _write(tmp_path / "exp.yaml", BASE)
    assert cli.main(["run", path, "--quiet"]) == 0
    out = capsys.readouterr().out
    result = runs.run(BASE, progress=False)                     # the same run, from the cache
    assert result.meta["cached"]
    assert f"test_accuracy: {result.last('test_accuracy')}" in out
    frame = pd.read_csv(tmp_path / "exp.csv", index_col="round")
    assert list(frame.index) == [0, 1, 2]
    assert frame["test_accuracy"].tolist() == result.history["test_accuracy"]
    assert cli.main(["run", path, "--quiet", "--out", str(tmp_path / "o" / "h.csv")]) == 0
    assert (tmp_path / "o" / "h.csv").exists()


def test_sweep_expands_a_cartesian_grid_into_one_csv(tmp_path, capsys):
    spec = {"base": BASE, "grid": {"aggregator": ["mean", "median"], "seed": [0, 1]}}
    path = _write(tmp_path / "grid.yaml", spec)
    assert cli.main(["sweep", path, "--quiet", "--backend", "local"]) == 0
    table = pd.read_csv(tmp_path / "grid.csv")
    assert list(table[["aggregator", "seed"]].itertuples(index=False, name=None)) == \
        [("mean", 0), ("mean", 1), ("median", 0), ("median", 1)]
    single = runs.run(dict(BASE, aggregator="median", seed=1), progress=False)
    assert single.meta["cached"]
    assert table["test_accuracy"].iloc[3] == single.last("test_accuracy")
    assert "median" in capsys.readouterr().out
    assert len(_ran(tmp_path)) == 4


def test_grid_addresses_dict_fields_with_a_dot():
    configs, points = cli.expand_grid({"base": dict(BASE, aggregator="krum"),
                                       "grid": {"aggregator_params.f": [0, 1]}})
    assert [c["aggregator_params"] for c in configs] == [{"f": 0}, {"f": 1}]
    assert points == [{"aggregator_params.f": 0}, {"aggregator_params.f": 1}]


@pytest.mark.parametrize("spec, field", [
    ({"base": dict(BASE, learning_rate=0.1), "grid": {"seed": [0]}}, "learning_rate"),
    ({"base": BASE, "grid": {"sead": [0, 1]}}, "sead"),
    ({"base": BASE, "grid": {"seed": 3}}, "seed"),
    ({"base": BASE, "grid": {"seed": [0]}, "workers": 2}, "workers"),
    ({"base": BASE, "grid": {"aggregator": ["median", "nope"]}}, "nope"),
    ({"base": dict(BASE, aggregator="krum"), "grid": {"aggregator_params.f": [1, 2]}},
     "aggregator_params"),                                      # n = 6 needs f < 2
    ({"base": BASE, "grid": {"attack": ["ipm"], "num_attackers": [1, 6]}}, "num_attackers"),
    ({"base": dict(BASE, attack="ipm", num_attackers=1, attack_params={"eps": 1}),
      "grid": {"seed": [0]}}, "attack_params"),
    ({"base": dict(BASE, model="nope"), "grid": {"seed": [0]}}, "model"),
])
def test_bad_sweeps_fail_before_anything_runs_naming_the_field(tmp_path, capsys, spec, field):
    path = _write(tmp_path / "grid.yaml", spec)
    assert cli.main(["sweep", path, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and field in err
    assert _ran(tmp_path) == [] and not (tmp_path / "grid.csv").exists()


def test_module_entry_point_rejects_unknown_keys(tmp_path):
    path = _write(tmp_path / "exp.yaml", dict(BASE, rounds_total=3))
    proc = subprocess.run([sys.executable, "-m", "fedlib", "run", path], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "rounds_total" in proc.stderr
    assert _ran(tmp_path) == []


def test_sweep_passes_checkpoint_every_to_run_many(tmp_path, monkeypatch, capsys):
    seen = {}
    real = runs.run_many

    def spy(configs, **kw):
        seen.update(kw)
        return real(configs, **kw)

    monkeypatch.setattr(runs, "run_many", spy)
    path = _write(tmp_path / "grid.yaml", {"base": BASE, "grid": {"seed": [0]}})
    assert cli.main(["sweep", path, "--quiet", "--backend", "local",
                     "--checkpoint-every", "7"]) == 0
    assert seen["checkpoint_every"] == 7
    assert cli.main(["sweep", path, "--quiet", "--backend", "local",
                     "--checkpoint-every", "0"]) == 2
    assert "checkpoint_every" in capsys.readouterr().err
