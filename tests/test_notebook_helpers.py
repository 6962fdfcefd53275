"""The helpers the notebooks share (summaries, paper tables, L2A names, diverged runs), and a
guard that no notebook defines one of them again."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from fedlib import diverged_runs, l2a_settings, romoa_paper_tables, summaries

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

MOVED = ["config", "seed_mean", "tail", "tail_mean", "adversary_weight", "paper_value", "cell_text",
         "diverged_curve", "run_group", "curve", "final", "rule_params", "attack_name"]
"""Helpers once copied between notebooks, now in fedlib (romoa_settings.fedavg_setting, summaries,
romoa_paper_tables, diverged_runs, l2a_settings)."""

PASTED = ["0.884297", "0.969517", "0.149003", "0.8888", "0.8804", "\"mnist\": 7.7"]
"""The papers' printed numbers (Romoa Tables 1–2, L2A Tables 2–3 and Figs. 9–10): only in fedlib
(romoa_paper_tables, l2a_paper_tables)."""


def _history(acc, weights=None):
    h = {"round": list(range(0, 5 * len(acc), 5)), "test_accuracy": list(acc)}
    if weights is not None:
        h["weights"] = weights
    return h


def test_tail_mean_and_fraction():
    assert summaries.tail_mean([0.1, 0.2, 0.4, 0.6], 2) == pytest.approx(0.5)
    assert summaries.tail_mean([0.3], 5) == pytest.approx(0.3)
    # last third of 6 recorded values = the last 2; None entries are skipped
    assert summaries.tail_fraction_mean([0.0, None, 0.1, 0.2, 0.3, 0.5, 0.7]) == pytest.approx(0.6)
    assert summaries.tail_fraction_mean([0.2, 0.4], fraction=1.0) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="last"):
        summaries.tail_mean([0.1], 0)
    with pytest.raises(ValueError, match="empty"):
        summaries.tail_mean([], 1)
    with pytest.raises(ValueError, match="fraction"):
        summaries.tail_fraction_mean([0.1], 0.0)
    with pytest.raises(ValueError, match="no recorded"):
        summaries.tail_fraction_mean([None, None])


def test_seed_curve_and_seed_tail_mean():
    a, b = _history([0.1, 0.3, 0.5]), _history([0.3, 0.5, 0.9])
    rounds, mean = summaries.seed_curve([a, b], "test_accuracy")
    np.testing.assert_array_equal(rounds, [0, 5, 10])
    np.testing.assert_allclose(mean, [0.2, 0.4, 0.7])
    _, err = summaries.seed_curve([a, b], lambda h: [1 - v for v in h["test_accuracy"]])
    np.testing.assert_allclose(err, [0.8, 0.6, 0.3])
    # per seed: mean of the last 2 (0.4 and 0.7), then over the seeds
    assert summaries.seed_tail_mean([a, b], "test_accuracy", 2) == pytest.approx(0.55)
    assert summaries.seed_tail_mean([a], "test_accuracy", 1) == pytest.approx(0.5)

    class Result:                                # anything with a .history (fedlib.runs.Result)
        history = b
    assert summaries.seed_tail_mean([Result()], "test_accuracy", 1) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="at least one run"):
        summaries.seed_curve([], "test_accuracy")
    with pytest.raises(ValueError, match="no 'train_accuracy'"):
        summaries.seed_tail_mean([a], "train_accuracy", 1)


def test_adversary_weight_is_a_running_mean_of_participant_0():
    h = _history([0.5], weights=[[0.6, 0.4], [0.0, 1.0], [0.3, 0.7], [0.9, 0.1]])
    np.testing.assert_allclose(summaries.adversary_weight(h, window=2), [0.6, 0.3, 0.15, 0.6])
    np.testing.assert_allclose(summaries.adversary_weight(h, window=3, participant=1),
                               [0.4, 0.7, 0.7, 0.6])
    with pytest.raises(ValueError, match="no aggregation weights"):
        summaries.adversary_weight(_history([0.5]))
    with pytest.raises(ValueError, match="last"):
        summaries.adversary_weight(h, window=0)


def test_ours_beside_paper():
    assert summaries.ours_beside_paper(0.12345, 0.5) == "0.123 / 0.500"
    assert summaries.ours_beside_paper(float("nan"), 0.014700) == "— / 0.015"
    assert summaries.ours_beside_paper(0.2, math.nan, digits=2) == "0.20 / —"
    assert summaries.SMOKE_NOTE == "smoke scale, not comparable"


def test_romoa_table1_and_table2_lookups():
    assert romoa_paper_tables.table1_value("mnist", "upa", "baseline") == 0.884297
    # both presets compare with the paper's single Romoa row; aliases resolve
    assert romoa_paper_tables.table1_value("mnist", "upa", "romoa-literal") == 0.014700
    assert romoa_paper_tables.table1_value("mnist", "UPA", "romoa-calibrated", 10, 1) == 0.014700
    assert romoa_paper_tables.table1_value("cifar10", "tpa", "geometric_median", 200, 99) \
        == 0.941820
    assert romoa_paper_tables.table1_value("mnist", "tpa", "mean", 20, 6) == 0.963074
    assert math.isnan(romoa_paper_tables.table1_value("mnist", "adaptive", "krum", 10, 1))
    assert math.isnan(romoa_paper_tables.table1_value("emnist", "upa", "krum", 10, 1))
    with pytest.raises(ValueError, match="no column"):
        romoa_paper_tables.table1_value("mnist", "upa", "krum", 10, 2)
    with pytest.raises(ValueError, match="unknown defense"):
        romoa_paper_tables.table1_value("mnist", "upa", "bulyan")
    for ds in romoa_paper_tables.TABLE1.values():
        for rows in ds.values():
            assert all(len(v) == len(romoa_paper_tables.TABLE1_COLUMNS) for v in rows.values())
    assert romoa_paper_tables.table2_value("cifar10", "romoa-calibrated", "upa") == 0.570603
    assert romoa_paper_tables.table2_value("mnist", "baseline", "none") == 0.149003
    assert math.isnan(romoa_paper_tables.table2_value("mnist", "rfa", "none"))


def test_l2a_names_and_rule_params():
    assert l2a_settings.lmp_variant("krum") == "lmp_krum"
    assert l2a_settings.lmp_variant("fltrust") == "fltrust_adaptive"
    assert l2a_settings.lmp_variant("clipped_median") == "lmp_trimmed_mean"
    assert l2a_settings.attack_name("lmp", "geometric_median") == "lmp_trimmed_mean"
    assert l2a_settings.attack_name("rl_500", "krum") == "rl"
    assert l2a_settings.attack_name("eb", "krum") == "eb"
    assert l2a_settings.rule_params("krum", 3, 2.0) == {"f": 3}
    assert l2a_settings.rule_params("clipped_median", 3, 2.0) == {"threshold": 2.0}
    assert l2a_settings.rule_params("fltrust", 3, 2.0) == {}
    assert set(l2a_settings.ATTACK_COLORS) == set(l2a_settings.ATTACK_LABELS)
    with pytest.raises(ValueError, match="krum_f"):
        l2a_settings.rule_params("krum", -1, 2.0)
    with pytest.raises(ValueError, match="attack"):
        l2a_settings.attack_name("", "krum")


def _tiny(attack="none", **over):
    cfg = dict(dataset="synthetic", model="synthetic-mlp", num_clients=6, clients_per_round=6,
               num_attackers=0, lr=0.1, batch_size=16, rounds=3, aggregator="mean", attack=attack,
               eval_every=1, eval_size=200, train_size=300, seed=0)
    cfg.update(over)
    return cfg


def test_diverged_curve_completes_and_stops_at_the_failing_round():
    done = diverged_runs.diverged_curve(_tiny())
    assert done.failed_round is None and done.why == "completed when re-run"
    np.testing.assert_array_equal(done.rounds, [0, 1, 2, 3])
    assert len(done.accuracy) == 4 and all(0 <= a <= 1 for a in done.accuracy)
    # a learning rate that overflows to Inf: the re-run stops at the round that raised
    broken = diverged_runs.diverged_curve(_tiny(lr=1e38, rounds=6))
    assert broken.failed_round is not None and broken.failed_round < 6
    assert len(broken.rounds) == broken.failed_round + 1 == len(broken.accuracy)


def test_run_curves_collects_results_and_classifies_aborted_runs(capsys):
    def setting(lr, attack, seed):
        return _tiny(attack, lr=lr, seed=seed, rounds=4)

    grid = diverged_runs.run_curves([(0.1, "none"), (1e38, "none")], setting, seeds=[0, 1],
                                    attack_start=2)
    assert set(grid.results) == {(0.1, "none")} and len(grid.results[0.1, "none"]) == 2
    assert (1e38, "none") in grid.aborted and (1e38, "none") in grid.faults   # honest run: a fault
    assert not grid.diverged
    assert "NOT A RESULT" in capsys.readouterr().out
    rounds, acc = grid.curve((0.1, "none"))
    assert len(rounds) == len(acc) == 5
    assert grid.final((0.1, "none"), 2) == pytest.approx(
        np.mean([np.mean(r.history["test_accuracy"][-2:]) for r in grid.results[0.1, "none"]]))
    assert math.isnan(grid.final((1e38, "none"), 2))
    with pytest.raises(ValueError, match="attack's name"):
        diverged_runs.run_curves([(0.1,)], setting, seeds=[0], attack_start=0)


def _code_cells(path):
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_no_notebook_defines_a_shared_helper_again():
    found = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for src in _code_cells(path):
            for name in MOVED:
                if re.search(rf"^\s*def {name}\(", src, re.M):
                    found.append(f"{path.name}: def {name}(")
            for number in PASTED:
                if number in src:
                    found.append(f"{path.name}: pastes a paper's printed {number}")
    assert not found, ("use fedlib.romoa_settings / summaries / romoa_paper_tables / "
                       "l2a_paper_tables / diverged_runs / l2a_settings:\n" + "\n".join(found))


def test_mean_adversary_weight_averages_aggregations_then_seeds():
    a = _history([0.5], weights=[[0.1, 0.9], [0.3, 0.7]])
    b = _history([0.5], weights=[[0.5, 0.5]])
    assert summaries.mean_adversary_weight([a, b]) == pytest.approx((0.2 + 0.5) / 2)
    assert summaries.mean_adversary_weight([a], participant=1) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no aggregation weights"):
        summaries.mean_adversary_weight([_history([0.5])])


def test_l2a_paper_tables():
    from fedlib import l2a_paper_tables as t

    assert t.table3_value("ipm", 10) == 0.8888
    assert t.table3_value("rl", 20) == 0.6890
    assert math.isnan(t.table3_value("eb", 15))
    with pytest.raises(ValueError, match="no attack"):
        t.table3_value("minmax", 5)
    assert all(len(v) == len(t.TABLE3_ATTACKERS) for v in t.TABLE3.values())
    assert len(t.TABLE1_SECONDS) == len(t.TABLE1_STAGES)
    assert t.FIGS9_10["clipped_median"]["rl28"] == 0.6890


def test_curve_settings_build_the_figures_run_configs():
    from fedlib.l2a_settings import CurveSettings
    values = dict(dataset="mnist", width=0.5, num_clients=100, clients_per_round=10,
                  num_attackers=20, lr=0.01, batch_size=128, rounds=50, krum_f=3,
                  clip_threshold=2.0, eval_every=10, eval_size=500, train_size=None, q=0.5,
                  samples=200, learn_rounds=10, rl_start=10, refresh_every=5, refresh_steps=100,
                  policy_steps=400, horizon=50, policy_lr=1e-3, algo_kwargs={}, inversion_batch=4,
                  inversion_iterations=20, denoiser_epochs=2, search_lr=None, search_batch=50,
                  unrelated=1)
    s = CurveSettings.from_parameters(values)
    krum = s.run_config("krum", "q-noniid", "lmp", seed=3)
    assert krum["aggregator_params"] == {"f": 3} and krum["attack"] == "lmp_krum"
    assert krum["q"] == 0.5 and krum["seed"] == 3 and "attack_params" not in krum
    assert s.run_config("krum", "iid", "none", 0)["num_attackers"] == 0
    rl = s.run_config("clipped_median", "iid", "rl", 1)
    assert rl["attack"] == "rl" and rl["attack_params"]["seed"] == 1
    assert rl["aggregator_params"] == {"threshold": 2.0} and "q" not in rl
    del values["horizon"]
    with pytest.raises(ValueError, match="horizon"):
        CurveSettings.from_parameters(values)
