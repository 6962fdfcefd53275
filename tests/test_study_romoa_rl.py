"""``fedlib.study_romoa_rl``: Romoa against the learned attack, with tiny budgets."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedlib import study_romoa_rl as S

TINY = dict(n=5, adversaries=1, iterations=8, eval_every=4, lr=0.5, batch_size=16,
            policy_steps=10, train_size=500, eval_size=200)


class ConstantPolicy:
    """A policy that always takes the same action and remembers what it observed."""

    def __init__(self, value, k=28):
        self.a, self.seen = np.full(k, value, np.float32), []

    def act(self, obs):
        self.seen.append(obs)
        return self.a


@pytest.fixture
def tiny():
    return S.StudySetting(**TINY)


def test_setting_rejects_bad_input_before_any_work():
    for bad, match in ((dict(adversaries=3, n=5), "n/2"), (dict(policy_steps=12), "multiple"),
                       (dict(moving_rate="2"), "moving_rate"), (dict(action="E_lambda"), "action"),
                       (dict(iterations=0), "iterations"), (dict(lr=float("nan")), "lr"),
                       (dict(upa_space="weights"), "upa_space")):
        with pytest.raises(ValueError, match=match):
            S.StudySetting(**{**TINY, **bad})
    assert S.StudySetting(**TINY).gamma == pytest.approx(1 / 5)
    assert S.StudySetting(**{**TINY, "moving_rate": "1"}).gamma == 1.0


def test_run_config_puts_every_cell_in_romoas_protocol(tiny):
    for d in S.DEFENSES:
        for a in S.ATTACKS:
            cfg = S.run_config(tiny, d, a, seed=3)
            assert (cfg["protocol"], cfg["tau"], cfg["num_clients"], cfg["seed"]) == \
                ("romoa", 4, 5, 3)
            assert cfg["moving_rate"] == pytest.approx(0.2)
            assert cfg["num_attackers"] == (0 if a == "none" else 1)
    assert S.run_config(tiny, "romoa-calibrated", "rl", 0)["attack"] == "none"
    tpa = S.run_config(tiny, "rfa", "tpa", 0)
    assert tpa["attack"] == "tpa" and tpa["attack_params"]["source"] == 1 \
        and tpa["attack_params"]["poison"] == 0
    assert tpa["attack_params"]["moving_rate"] == pytest.approx(0.2)
    assert S.run_config(tiny, "krum", "adaptive", 0)["attack"] == "rule_search"
    assert S.run_config(tiny, "krum", "upa", 0)["aggregator_params"] == {"f": 1}
    assert S.run_config(tiny, "romoa-literal", "upa", 0)["aggregator_params"] == \
        {"reading": "literal"}
    with pytest.raises(ValueError, match="unknown attack"):
        S.run_config(tiny, "rfa", "ipm", 0)
    with pytest.raises(ValueError, match="unknown defense"):
        S.run_config(tiny, "median", "upa", 0)


def test_poison_level_by_hand():
    up = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 0.0]])
    mal = torch.tensor([True, False, False])
    # benign mean (1, 0), malicious mean (3, 4): ‖(2, 4)‖ / 1
    assert S.poison_level(up, mal) == pytest.approx(math.sqrt(20))
    honest_like = torch.tensor([[2.0, 2.0], [3.0, 4.0], [1.0, 0.0]])     # the benign mean itself
    assert S.poison_level(honest_like, mal) == pytest.approx(0.0)
    assert math.isnan(S.poison_level(up, torch.zeros(3, dtype=torch.bool)))
    assert math.isnan(S.poison_level(torch.zeros(3, 2), mal))        # benign mean of length 0
    with pytest.raises(ValueError, match="uploads"):
        S.poison_level(up, mal[:2])


def test_run_cell_records_weights_poison_and_accuracy(tiny, one_thread):
    row, trace = S.run_cell(tiny, "romoa-calibrated", "upa", 0)
    assert row["status"] == "ok" and row["iterations_run"] == 8 and len(trace) == 8
    assert list(trace["sync"]) == [t % 4 == 3 for t in range(8)]
    # Romoa's factors exist from the first iteration (Alg. 2 lines 16–19); the seen weight lags
    assert trace["weight"].notna().all() and 0.0 <= trace["weight"].min() <= 1.0
    assert math.isnan(trace["weight_seen"][0])
    np.testing.assert_array_equal(trace["weight_seen"][1:], trace["weight"][:-1])
    assert (trace["poison_level"] > 0).all() and trace["action_norm"].isna().all()
    assert trace["accuracy"].notna().tolist() == [False, False, False, True] * 2
    assert row["final_accuracy"] == trace["accuracy"].iloc[-1]
    assert row["mean_adversary_weight"] == pytest.approx(trace["weight"].mean())
    # memoryless Krum has no weight before its first aggregation; no attack: no poison level
    _, krum = S.run_cell(tiny, "krum", "none", 0)
    assert krum["weight"][:3].isna().all() and krum["weight"][3:].notna().all()
    assert krum["poison_level"].isna().all()
    # config + seed reproduce the run bit for bit
    again, trace2 = S.run_cell(tiny, "romoa-calibrated", "upa", 0)
    pd.testing.assert_frame_equal(trace, trace2)
    assert again["final_accuracy"] == row["final_accuracy"]


def test_run_cell_executes_a_policy_and_logs_its_action(tiny, one_thread):
    from fedlib.federation import Federation

    fed = Federation.from_config(S.run_config(tiny, "romoa-literal", "rl", 0))
    env = S.env_config(tiny, "romoa-literal", 0, fed.theta[0], fed.attacker_data[0],
                       fed.task.num_classes)
    policy = ConstantPolicy(0.3)
    row, trace = S.run_cell(tiny, "romoa-literal", "rl", 0, policy, env)
    assert row["status"] == "ok" and len(policy.seen) == 8
    np.testing.assert_allclose(trace["action_norm"], 0.3, rtol=1e-6)
    assert (trace["poison_level"] > 0).all()
    # the policy observed the weight the trace records as seen (0 before any aggregation)
    seen = [float(o["attacker_weight"][0]) for o in policy.seen]
    assert seen[0] == 0.0
    np.testing.assert_allclose(seen[1:], trace["weight_seen"][1:], rtol=1e-6)
    with pytest.raises(ValueError, match="policy and env"):
        S.run_cell(tiny, "romoa-literal", "rl", 0)
    with pytest.raises(ValueError, match="policy and env"):
        S.run_cell(tiny, "romoa-literal", "upa", 0, policy, env)


def test_env_config_mirrors_the_real_federation(tiny):
    from fedlib.federation import Federation

    fed = Federation.from_config(S.run_config(tiny, "krum", "rl", 1))
    x, y = fed.attacker_data[0]
    env = S.env_config(tiny, "krum", 1, fed.theta[0], (x, y), fed.task.num_classes)
    assert torch.equal(env.theta0, fed.theta[0])
    assert (env.protocol, env.tau, env.num_clients, env.clients_per_round, env.num_attackers,
            env.horizon, env.aggregator, env.aggregator_params) == \
        ("romoa", 4, 5, 5, 1, 8, "krum", {"f": 1})
    assert env.moving_rate == pytest.approx(0.2) and env.action == "full"
    # P̃ and the held-out part split the attackers' own data
    assert len(env.data[0]) + len(env.holdout[0]) == len(x)
    assert len(env.holdout[0]) == min(500, len(x) // 5)
    with pytest.raises(ValueError, match="two samples"):
        S.env_config(tiny, "krum", 1, fed.theta[0], (x[:1], y[:1]), 2)


def test_run_cell_records_a_divergence(tiny, monkeypatch):
    from fedlib.federation import Federation

    real = Federation.step

    def step(self, *args, **kwargs):
        if self.round == 4:            # right after an evaluated iteration
            raise FloatingPointError("round 4: the mean aggregate contains NaN/Inf")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Federation, "step", step)
    row, trace = S.run_cell(tiny, "baseline", "upa", 0)
    assert row["status"] == "diverged" and row["iterations_run"] == 4 and len(trace) == 4
    assert not math.isnan(trace["accuracy"].iloc[-1]) and math.isnan(row["final_accuracy"])

    def broken(self, *args, **kwargs):
        raise ValueError("krum: f must be an integer")        # a real error is not a divergence

    monkeypatch.setattr(Federation, "step", broken)
    with pytest.raises(ValueError, match="krum"):
        S.run_cell(tiny, "baseline", "upa", 0)


def test_run_study_trains_a_policy_per_rl_defense(tiny, one_thread):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    np_before = np.random.get_state()[1].copy()  # noqa: NPY002
    cells, trace = S.run_study(tiny, ["romoa-calibrated", "baseline"], ["none", "rl"], [0],
                               rl_defenses=["romoa-calibrated"])
    assert torch.equal(torch.get_rng_state(), before)           # caller's RNG untouched
    assert np.array_equal(np.random.get_state()[1], np_before)  # noqa: NPY002
    assert list(zip(cells["defense"], cells["attack"])) == [
        ("romoa-calibrated", "none"), ("romoa-calibrated", "rl"), ("baseline", "none")]
    assert cells["policy_seconds"].notna().tolist() == [False, True, False]
    assert len(trace) == 3 * 8 and set(trace["attack"]) == {"none", "rl"}
    rl = trace[trace["attack"] == "rl"]
    assert rl["action_norm"].between(0, 1).all()
    with pytest.raises(ValueError, match="rl_defenses"):
        S.run_study(tiny, ["baseline"], ["rl"], [0], rl_defenses=["rfa"])
    with pytest.raises(ValueError, match="attacks"):
        S.run_study(tiny, ["baseline"], ["ipm"], [0])
    with pytest.raises(ValueError, match="unknown defense"):
        S.run_study(tiny, ["median"], ["none"], [0])


def test_run_study_builds_every_simulator_before_any_run(tiny, monkeypatch):
    from fedlib.rl import sim

    ran = []
    monkeypatch.setattr(S, "run_cell", lambda *a, **k: ran.append(a))

    class Refused:
        def __init__(self, config, seeds):
            if config.aggregator == "geometric_median":
                raise ValueError("bad parameters for aggregator")

    monkeypatch.setattr(sim, "Simulator", Refused)
    with pytest.raises(ValueError, match="simulator cannot run 'rfa'"):
        S.run_study(tiny, ["baseline", "rfa"], ["none", "rl"], [0])
    assert ran == []


def _cells(rows):
    return pd.DataFrame([dict(zip(("defense", "attack", "seed", "status", "final_accuracy"), r))
                         for r in rows])


def test_accuracy_table_and_drop():
    cells = _cells([("rfa", "none", 0, "ok", 0.9), ("rfa", "none", 1, "ok", 0.7),
                    ("rfa", "rl", 0, "ok", 0.6), ("rfa", "rl", 1, "diverged", math.nan),
                    ("krum", "none", 0, "ok", 0.8), ("krum", "rl", 0, "ok", 0.8)])
    table = S.accuracy_table(cells)
    assert list(table.index) == ["rfa", "krum"] and list(table.columns) == ["none", "rl"]
    assert table.loc["rfa", "none"] == pytest.approx(0.8)
    assert table.loc["rfa", "rl"] == pytest.approx(0.3)              # diverged counts as 0
    assert S.accuracy_table(cells, diverged_accuracy=0.5).loc["rfa", "rl"] == pytest.approx(0.55)
    drop = S.accuracy_drop(table, "rl")
    assert drop["rfa"] == pytest.approx(0.5) and drop["krum"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no 'upa'"):
        S.accuracy_drop(table, "upa")
    with pytest.raises(ValueError, match="cells"):
        S.accuracy_table(pd.DataFrame({"defense": ["rfa"]}))


def test_poison_response_reads_the_level_against_the_seen_weight():
    w = [math.nan, 0.1, 0.2, 0.3, 0.4]
    trace = pd.DataFrame({"defense": "romoa-literal", "attack": "rl", "weight_seen": w,
                          "poison_level": [9.0, 1.0, 2.0, 3.0, 4.0],
                          "action_norm": [0.5, 0.4, 0.3, 0.2, 0.1]})
    up = S.poison_response(trace, "romoa-literal")
    assert up["points"] == 4 and up["correlation"] == pytest.approx(1.0)
    assert up["low"] == pytest.approx(1.5) and up["high"] == pytest.approx(3.5)
    down = S.poison_response(trace, "romoa-literal", level="action_norm")
    assert down["correlation"] == pytest.approx(-1.0) and down["low"] > down["high"]
    assert math.isnan(S.poison_response(trace, "rfa")["correlation"])      # no such rows
    flat = trace.assign(action_norm=0.5)
    assert math.isnan(S.poison_response(flat, "romoa-literal", level="action_norm")["correlation"])
    with pytest.raises(ValueError, match="level"):
        S.poison_response(trace, "rfa", level="weight")
