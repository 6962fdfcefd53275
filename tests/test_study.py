"""fedlib.study: the defense × attack grid, its runs and its summaries."""

import math
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest

from fedlib import aggregators, attacks, runs, study

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(model="synthetic-mlp", rounds=3, lr=0.5, batch_size=16, eval_every=3, eval_size=100,
            record_weights=False, device="cpu")


# ---------------------------------------------------------------- the grid
def test_defenses_cover_every_rule_once_and_both_romoa_readings():
    names = study.defenses()
    assert len(names) == len(set(names))
    for rule in aggregators.available():
        if rule == "romoa":
            assert {"romoa-literal", "romoa-calibrated"} <= set(names)
        elif rule == "rfa":                               # an alias of the geometric median
            assert "geometric_median" in names and "rfa" not in names
        else:
            assert rule in names


def test_attack_names_are_none_and_every_attack_including_rl():
    assert study.attack_names()[0] == "none"
    assert set(study.attack_names()[1:]) == set(attacks.available()) and "rl" in attacks.available()


@pytest.mark.parametrize("rule,f", [("krum", 2), ("multi_krum", 2), ("trimmed_mean", 2),
                                    ("bulyan", 1)])
def test_count_rules_get_the_expected_sampled_attackers_capped(rule, f):
    assert study.defense_params(rule) == {"f": f}      # w·M/K = 10·20/100 = 2; Bulyan: n ≥ 4f + 3
    big = dict(num_clients=100, clients_per_round=10, num_attackers=90)   # w·M/K = 9
    cap = {"krum": 3, "multi_krum": 3, "trimmed_mean": 4, "bulyan": 1}[rule]
    assert study.defense_params(rule, big) == {"f": cap}
    aggregators.get(rule, **study.defense_params(rule, big))          # valid with w = 10 uploads


def test_sync_cells_use_l2a_setting_and_romoa_its_lookahead_protocol():
    cfg = study.cell_config("synthetic", "median", "ipm", 3, BASE)
    assert (cfg["protocol"], cfg["num_clients"], cfg["clients_per_round"], cfg["num_attackers"],
            cfg["seed"], cfg["rounds"]) == ("sync", 100, 10, 20, 3, 3)
    rom = study.cell_config("synthetic", "romoa-calibrated", "ipm", 0, BASE, tau=4,
                            iterations_per_round=4)
    assert (rom["protocol"], rom["num_clients"], rom["clients_per_round"], rom["num_attackers"],
            rom["tau"], rom["moving_rate"], rom["rounds"]) == ("romoa", 10, None, 2, 4, 0.1, 12)
    assert rom["aggregator"] == "romoa" and rom["aggregator_params"] == {"reading": "calibrated"}
    tpa = study.cell_config("synthetic", "romoa-literal", "tpa", 0, BASE,
                            attack_params={"source": 1, "poison": 0})
    assert tpa["attack_params"]["moving_rate"] == 0.1      # TPA moves towards θ̄ at γ = 1/n
    sync = study.cell_config("synthetic", "mean", "tpa", 0, BASE)
    assert "moving_rate" not in sync["attack_params"]
    none = study.cell_config("synthetic", "krum", "none", 0, BASE)
    assert none["num_attackers"] == 0 and none["attack"] == "none"


def test_rl_policy_seed_follows_the_run_and_explicit_seed_wins():
    cfg = study.cell_config("synthetic", "mean", "rl", 5, BASE, attack_params={"horizon": 3})
    assert cfg["attack_params"] == {"horizon": 3, "seed": 5}
    cfg = study.cell_config("synthetic", "mean", "rl", 5, BASE, attack_params={"seed": 1})
    assert cfg["attack_params"]["seed"] == 1


def test_grid_shape_order_and_skip():
    cells = study.grid("synthetic", ["mean", "median"], ["none", "ipm", "alie"], [0, 1], BASE,
                       skip=[("median", "alie")])
    assert [(c.defense, c.attack) for c in cells] == [
        ("mean", "none"), ("mean", "ipm"), ("mean", "alie"), ("median", "none"), ("median", "ipm")]
    assert all([c["seed"] for c in cell.configs] == [0, 1] for cell in cells)


@pytest.mark.parametrize("kwargs,match", [
    (dict(defense_list=["nope"]), "unknown defenses"),
    (dict(defense_list=["rfa"]), "unknown defenses"),
    (dict(attack_list=["nope"]), "unknown attack"),
    (dict(seeds=[]), "seeds must be non-empty"),
    (dict(seeds=[0, 0]), "without repeats"),
    (dict(base=dict(BASE, aggregator="krum")), "base may not set"),
    (dict(base=dict(BASE, num_clients=5)), "base may not set"),
    (dict(skip=[("krum", "ipm")]), "skip names pairs outside"),
    (dict(attack_params={"nope": {}}), "unknown attacks"),
    (dict(attack_params={"ipm": {"nope": 1}}), "unknown parameters"),
    (dict(base=dict(BASE, lr=-1.0)), "lr must be positive"),
    (dict(setting=dict(num_clients=10, clients_per_round=20, num_attackers=2)), "setting needs"),
])
def test_grid_rejects_bad_input_before_any_run(kwargs, match, monkeypatch):
    monkeypatch.setattr(runs, "run_many", lambda *a, **k: pytest.fail("ran"))
    args = dict(dataset="synthetic", defense_list=["mean"], attack_list=["none", "ipm"],
                seeds=[0], base=BASE)
    with pytest.raises(ValueError, match=match):
        study.grid(**{**args, **kwargs})


# ---------------------------------------------------------------- summaries on fake rows
def fake_rows():
    """mean: ipm and alie tie (0.3) below none; median: alie diverges in seed 1."""
    acc = {("mean", "none"): [0.9, 0.8], ("mean", "ipm"): [0.3, 0.3], ("mean", "alie"): [0.2, 0.4],
           ("median", "none"): [0.95, 0.85], ("median", "ipm"): [0.7, 0.5],
           ("median", "alie"): [0.8, None]}
    rows = [dict(dataset="synthetic", defense=d, attack=a, seed=s,
                 final_accuracy=math.nan if v is None else v,
                 status="diverged" if v is None else "ok")
            for (d, a), vs in acc.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_summarise_mean_worst_seed_and_diverged_as_zero():
    s = study.summarise(fake_rows()).set_index(["defense", "attack"])
    assert s.loc[("mean", "none"), "mean_accuracy"] == pytest.approx(0.85)
    assert s.loc[("mean", "alie"), "worst_seed_accuracy"] == pytest.approx(0.2)
    assert s.loc[("median", "alie"), "mean_accuracy"] == pytest.approx(0.4)     # (0.8 + 0) / 2
    assert s.loc[("median", "alie"), "worst_seed_accuracy"] == 0.0
    assert s.loc[("median", "alie"), "diverged"] == 1 and s.loc[("mean", "ipm"), "seeds"] == 2
    half = study.summarise(fake_rows(), diverged_accuracy=0.5).set_index(["defense", "attack"])
    assert half.loc[("median", "alie"), "mean_accuracy"] == pytest.approx(0.65)


def test_worst_case_and_best_attack_per_defense():
    wc = study.worst_case(study.summarise(fake_rows())).set_index("defense")
    assert wc.loc["mean", "worst_case"] == pytest.approx(0.3)
    assert wc.loc["mean", "best_attack"] == "ipm" and wc.loc["mean", "tied"] == 2   # ipm = alie
    assert wc.loc["mean", "no_attack"] == pytest.approx(0.85)
    assert wc.loc["median", "best_attack"] == "alie"                               # 0.4 < 0.6
    worst = study.worst_case(study.summarise(fake_rows()), "worst_seed_accuracy")
    assert worst.set_index("defense").loc["median", "worst_case"] == 0.0
    with pytest.raises(ValueError, match="stat must be"):
        study.worst_case(study.summarise(fake_rows()), "accuracy")


def test_matrix_has_a_worst_case_column_and_nan_for_cells_not_run():
    rows = fake_rows()
    rows = rows[~((rows.defense == "median") & (rows.attack == "ipm"))]
    m = study.matrix(study.summarise(rows), "synthetic", attack_order=["none", "ipm", "alie"])
    assert list(m.columns) == ["none", "ipm", "alie", study.WORST_CASE]
    assert math.isnan(m.loc["median", "ipm"])
    assert m.loc["median", study.WORST_CASE] == pytest.approx(0.4)
    assert m.loc["mean", study.WORST_CASE] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no rows for dataset"):
        study.matrix(study.summarise(rows), "mnist")


@pytest.mark.parametrize("change,match", [
    (lambda r: r.drop(columns="status"), "lack the columns"),
    (lambda r: r.iloc[:0], "no rows"),
    (lambda r: r.assign(status="weird"), "unknown status"),
    (lambda r: r.assign(final_accuracy=math.nan), "has no final accuracy"),
])
def test_summarise_rejects_bad_rows(change, match):
    with pytest.raises(ValueError, match=match):
        study.summarise(change(fake_rows()))


# ---------------------------------------------------------------- running
def test_a_diverging_run_is_recorded_and_other_errors_propagate(monkeypatch):
    cells = study.grid("synthetic", ["mean"], ["none", "ipm"], [0, 1], BASE)

    def many(configs, **kw):
        raise FloatingPointError("one replica diverged")

    def one(cfg, **kw):
        if cfg["attack"] == "ipm" and cfg["seed"] == 1:
            raise FloatingPointError("round 2: the mean aggregate contains NaN/Inf")
        if cfg["attack"] == "ipm":          # a rule left with too few finite rows
            raise ValueError("krum needs n > 2f + 2 = 6; got n=1 after excluding 9 non-finite rows")
        return SimpleNamespace(history={"test_accuracy": [0.5, 0.9]}, meta={"cached": True})

    monkeypatch.setattr(runs, "run_many", many)
    monkeypatch.setattr(runs, "run", one)
    rows = study.run_grid(cells)
    assert list(rows["status"]) == ["ok", "ok", "diverged", "diverged"]
    assert list(rows["final_accuracy"][:2]) == [0.9] * 2 and rows["final_accuracy"][2:].isna().all()

    def broken(cfg, **kw):
        raise ValueError("a real bug, not a divergence")

    monkeypatch.setattr(runs, "run", broken)
    with pytest.raises(ValueError, match="a real bug"):
        study.run_grid(cells)
    with pytest.raises(ValueError, match="at least one cell"):
        study.run_grid([])


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))


def test_a_tiny_real_grid_on_the_synthetic_set(cache_in_tmp):
    """2 rules (one Romoa preset) × no attack / IPM × 2 seeds, L2A's setting; cached rerun."""
    cells = study.grid("synthetic", ["median", "romoa-literal"], ["none", "ipm"], [0, 1], BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = study.run_grid(cells)
        again = study.run_grid(cells)
    assert len(rows) == 8 and set(rows["status"]) == {"ok"}
    assert rows["final_accuracy"].between(0, 1).all() and not rows["cached"].any()
    assert again["cached"].all()
    pd.testing.assert_series_equal(rows["final_accuracy"], again["final_accuracy"])
    summary = study.summarise(rows)
    assert len(summary) == 4 and (summary["seeds"] == 2).all()
    m = study.matrix(summary, "synthetic")
    assert m.shape == (2, 3) and m.notna().all().all()
