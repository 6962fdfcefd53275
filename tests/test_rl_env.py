"""The attackers' simulator (fedlib.rl): spaces, crafting, rewards, Krum's count, VecEnv ≡ envs."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import VecCheckNan

from fedlib.aggregators import krum
from fedlib.rl import (EnvConfig, PoisoningEnv, PoisoningVecEnv, approximate_root,
                       synthetic_env_config)
from fedlib.rl import actions as act
from fedlib.rl.sim import scale_last_layer


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> EnvConfig:
    base = dict(num_samples=300, holdout_size=200, horizon=6)
    base.update(kw)
    return synthetic_env_config(**base)


def run(env: PoisoningEnv, actions: list[np.ndarray], seed: int = 0):
    obs, _ = env.reset(seed=seed)
    out = [(obs, 0.0, None)]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, info))
    return out


# --------------------------------------------------------------------------- spaces
def test_spaces_and_last_layer_scaling():
    c = cfg(action="gamma_E", aggregator="krum")
    env = PoisoningEnv(c)
    assert env.action_space == gym.spaces.Box(-1, 1, (2,), np.float32)
    assert set(env.observation_space.spaces) == {"last_layer", "attackers", "progress"}
    assert env.observation_space["last_layer"].shape == (6,)        # Linear(2, 2): 4 + 2
    assert env.observation_space["attackers"].n == c.clients_per_round + 1
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    last = c.theta0[-6:]
    expected = (last - last.min()) / (last.max() - last.min()) * 2 - 1
    torch.testing.assert_close(torch.from_numpy(obs["last_layer"]), expected)
    assert obs["last_layer"].min() == -1 and obs["last_layer"].max() == 1
    assert obs["attackers"] >= 1                                     # attack steps only
    assert float(obs["progress"][0]) == 0.0
    assert torch.equal(scale_last_layer(torch.full((2, 3), 5.0)), torch.zeros(2, 3))
    full = PoisoningEnv(cfg())
    assert full.action_space.shape == (28,)
    no_time = PoisoningEnv(cfg(time_feature=False))
    assert "progress" not in no_time.observation_space.spaces


def test_decode_action_maps_box_onto_ranges_and_rounds_E():
    ranges = {"gamma": (0.0, 10.0), "E": (0.0, 20.0)}
    p = act.decode_action(torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.03], [0.0, 0.07]]),
                          "gamma_E", ranges)
    assert p["gamma"].tolist() == [0.0, 10.0, 5.0, 5.0]
    assert p["E"].tolist() == [0, 20, 10, 11]                        # 10.3 → 10, 10.7 → 11
    assert p["E"].dtype == torch.long
    with pytest.raises(ValueError):
        act.decode_action(torch.zeros(1, 3), "gamma_E", ranges)


@pytest.mark.parametrize("kw", [dict(action="gamma_E", aggregator="krum"),
                                dict(action="full", aggregator="clipped_median", step_unit="round"),
                                dict(action="full", time_feature=False)])
def test_env_passes_gymnasium_and_sb3_checkers(kw):
    env = PoisoningEnv(cfg(**kw))
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(PoisoningEnv(cfg(**kw)), warn=True)


@pytest.mark.parametrize("objective", ["cosine", "root_loss"])
def test_fltrust_env_with_E_lambda_and_an_approximated_root(objective):
    root = approximate_root(cfg().data, size=50, q0=0.8, seed=1)
    assert len(root[1]) == 50 and int((root[1] == 0).sum()) == 40    # q₀-biased towards class 0
    env = PoisoningEnv(cfg(aggregator="fltrust", action="E_lambda", horizon=3, root=root,
                           fltrust_objective=objective))
    gym_check_env(env, skip_render_check=True)
    env.reset(seed=0)
    theta_t = env.sim.theta[:1].clone()
    obs, r, term, trunc, info = env.step(np.array([1.0, 0.0], np.float32))
    assert info["E"] == 20 and info["lambda"] == pytest.approx(0.5) and np.isfinite(r)
    last = env.sim.last[0]
    crafted = last["uploads"][last["malicious"]][0]
    g0 = env.sim.server_update(theta_t)[0] / env.config.lr
    assert crafted.abs().sum() > 0
    if objective == "cosine":                 # ‖upload‖ = ‖g₀‖·‖θ_t − θ_E‖ ≤ ‖g₀‖²
        assert crafted.norm() <= g0.norm() ** 2 * (1 + 1e-4)


def test_config_rejects_bad_input_before_work():
    base = cfg()
    with pytest.raises(ValueError, match="theta0"):
        dataclasses.replace(base, theta0=torch.zeros(5))
    with pytest.raises(ValueError, match="num_attackers"):
        dataclasses.replace(base, num_attackers=100)
    with pytest.raises(ValueError, match="preset"):
        dataclasses.replace(base, action=None, preset="nope")
    with pytest.raises(ValueError, match="root"):
        dataclasses.replace(base, aggregator="fltrust")
    with pytest.raises(ValueError, match="cannot be simulated"):
        dataclasses.replace(base, aggregator="romoa")
    with pytest.raises(ValueError, match="f must be"):
        PoisoningEnv(dataclasses.replace(base, aggregator_params={"f": 4}))   # w = 10: f ≤ 3
    assert cfg(action="gamma_E", aggregator="clipped_median").ranges == \
        {"gamma": (0.0, 10.0), "E": (0.0, 50.0)}
    assert cfg(action=None, preset="authors_clipped_median").ranges == \
        {"gamma": (0.1, 29.9), "E": (1.0, 49.0)}


# --------------------------------------------------------------------------- dynamics
def test_reward_is_the_held_out_loss_increase_and_has_the_right_sign():
    c = cfg(action="gamma_E", aggregator="mean", step_unit="round", num_clients=10,
            num_attackers=5, horizon=3)
    env = PoisoningEnv(c)
    obs, info0 = env.reset(seed=0)
    loss0 = info0["loss"]
    # γ = 10, E = 20: a boosted gradient-ascent update, averaged with the benign ones
    _, r_attack, _, _, info = env.step(np.array([1.0, 1.0], np.float32))
    assert r_attack == pytest.approx(info["loss"] - loss0, rel=1e-6, abs=1e-6)
    assert r_attack > 0
    env.reset(seed=0)
    # γ = 0: the zero update; the benign half trains the model, the loss falls
    _, r_zero, _, _, info_zero = env.step(np.array([-1.0, 1.0], np.float32))
    assert r_zero == pytest.approx(info_zero["loss"] - loss0, rel=1e-6, abs=1e-6)
    assert r_zero < 0
    assert torch.equal(env.sim.last[0]["uploads"][env.sim.last[0]["malicious"]],
                       torch.zeros(5, 28))


def test_nan_fallback_halves_gamma_and_drops_one_step():
    calls = []

    def make(rows, g, e):
        calls.append((rows.tolist(), g.tolist(), e.tolist()))
        bad = e > 2                                   # anything beyond 2 steps "overflows"
        out = g[:, None].float() * torch.ones(len(rows), 3)
        out[bad] = float("nan")
        return out

    upd, g, e = act.craft_with_fallback(make, torch.tensor([8.0, 1.0, 3.0, 0.0]),
                                        torch.tensor([5, 2, 0, 4]))
    assert e.tolist() == [2, 2, 0, 4] and g.tolist() == [1.0, 1.0, 3.0, 0.0]
    assert torch.equal(upd, torch.tensor([[1.0] * 3, [1.0] * 3, [0.0] * 3, [0.0] * 3]))
    assert calls[0][0] == [0, 1] and calls[-1] == ([0], [1.0], [2])
    # everything fails: the zero update after E reaches 0
    upd, g, e = act.craft_with_fallback(
        lambda r, g, e: torch.full((len(r), 2), float("inf")), torch.tensor([1.0]),
        torch.tensor([3]))
    assert torch.equal(upd, torch.zeros(1, 2)) and e.tolist() == [0]


def test_gamma_E_crafting_is_gamma_times_the_ascent_path():
    theta = torch.zeros(2, 3)
    grad_fn = lambda th, x, y: torch.ones_like(th)        # noqa: E731  constant ascent direction
    batches = torch.zeros(2, 1, 4, 1, dtype=torch.long)
    x, y = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
    upd, g, e = act.craft_gamma_E(grad_fn, theta, torch.tensor([2.0, 3.0]), torch.tensor([4, 1]),
                                  batches, x, y, step_size=0.5)
    # θ_E = θ_t + E·0.5, upload γ(θ_t − θ_E) = −γ·E/2
    torch.testing.assert_close(upd, torch.tensor([[-4.0] * 3, [-1.5] * 3]))


def test_E_lambda_respects_the_norm_bound():
    theta = torch.zeros(1, 4)
    g0 = torch.tensor([[0.0, 0.3, 0.0, 0.4]])                          # ‖g₀‖ = 0.5
    big = lambda th, x, y, rows: torch.full_like(th, 10.0)            # noqa: E731
    batches = torch.zeros(1, 1, 5, 1, dtype=torch.long)
    upd, g, e = act.craft_E_lambda(big, theta, g0, torch.tensor([5]), batches,
                                   torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), 1.0)
    assert g.item() == pytest.approx(0.5)
    assert (upd / 0.5).norm().item() == pytest.approx(0.5, rel=1e-5)   # ‖θ_t − θ_E‖ = ‖g₀‖


def test_krum_gets_the_number_of_attackers_sampled_that_round():
    c = cfg(action="gamma_E", aggregator="krum", step_unit="round", horizon=40,
            num_clients=20, num_attackers=8)
    env = PoisoningEnv(c)
    env.reset(seed=1)
    seen = set()
    for _ in range(40):
        before = env.sim.theta[0].clone()
        env.step(np.array([0.5, -0.5], np.float32))
        last = env.sim.last[0]
        m = int(last["malicious"].sum())
        assert last["num_attackers"] == m
        assert last["f"] == min(m, 3)                                  # w = 10: Krum's f ≤ 3
        torch.testing.assert_close(env.sim.theta[0], before - krum(last["uploads"], f=min(m, 3)))
        seen.add(m)
    assert len(seen) >= 3                                              # varied counts, incl. 0
    fixed = PoisoningEnv(dataclasses.replace(c, aggregator_params={"f": 2}))
    fixed.reset(seed=1)
    fixed.step(np.zeros(2, np.float32))
    assert fixed.sim.last[0]["f"] == 2


def test_crafting_never_reads_benign_uploads(monkeypatch):
    c = cfg(action="gamma_E", aggregator="median", step_unit="round", num_clients=10,
            num_attackers=4, horizon=2)
    a = np.array([0.2, 0.4], np.float32)
    clean = PoisoningEnv(c)
    clean.reset(seed=5)
    clean.step(a)
    crafted = clean.sim.last[0]["uploads"][clean.sim.last[0]["malicious"]]
    poisoned = PoisoningEnv(c)
    fed = poisoned.sim.fed                                # garbage local training → uploads
    for name in ("local_train", "local_train_all"):
        real = getattr(fed, name)
        monkeypatch.setattr(fed, name, lambda *args, _r=real: _r(*args) * 1e3 + 7.0)
    poisoned.reset(seed=5)
    poisoned.step(a)
    last = poisoned.sim.last[0]
    assert not torch.allclose(last["uploads"][~last["malicious"]],
                              clean.sim.last[0]["uploads"][~clean.sim.last[0]["malicious"]])
    assert torch.equal(last["uploads"][last["malicious"]], crafted)
    assert crafted.abs().sum() > 0


def test_episodes_restart_at_theta0_with_fresh_sampling_and_are_reproducible():
    c = cfg(action="full", horizon=4, step_unit="round")
    acts = [np.full(28, 0.1 * k, np.float32) for k in range(4)]
    env = PoisoningEnv(c)
    first = run(env, acts, seed=9)
    again = run(PoisoningEnv(c), acts, seed=9)
    for (o1, r1, _), (o2, r2, _) in zip(first, again):
        assert r1 == r2 and all(np.array_equal(o1[k], o2[k]) for k in o1)
    ids0 = [env.sim.sample(0, t)[0] for t in range(4)]
    obs_next, _ = env.reset()                                   # episode 1: same θ₀ ...
    assert np.array_equal(obs_next["last_layer"], first[0][0]["last_layer"])
    ids1 = [env.sim.sample(0, t)[0] for t in range(4)]
    assert any(not torch.equal(u, v) for u, v in zip(ids0, ids1))   # ... new client sampling
    env.reset(seed=9)
    assert all(torch.equal(u, env.sim.sample(0, t)[0]) for t, u in enumerate(ids0))


def test_horizon_terminates_or_truncates():
    for tf, expect in ((True, (True, False)), (False, (False, True))):
        env = PoisoningEnv(cfg(horizon=3, time_feature=tf))
        env.reset(seed=0)
        flags = [env.step(np.zeros(28, np.float32))[2:4] for _ in range(3)]
        assert flags[:2] == [(False, False)] * 2 and flags[2] == expect


# --------------------------------------------------------------------------- VecEnv
@pytest.mark.parametrize("kw", [
    dict(action="gamma_E", aggregator="krum"),
    dict(action="full", aggregator="clipped_median", step_unit="round")])
def test_vecenv_equals_a_loop_of_envs(kw):
    c = cfg(horizon=3, **kw)
    seeds = [4, 11, 12]
    vec = VecCheckNan(PoisoningVecEnv(c, seeds=seeds), raise_exception=True)
    envs = [PoisoningEnv(dataclasses.replace(c, seed=s)) for s in seeds]
    rng = np.random.default_rng(0)
    obs_v = vec.reset()
    obs_e = [e.reset()[0] for e in envs]
    for _ in range(7):                                   # crosses two episode boundaries
        for i in range(3):
            for k in obs_e[i]:
                np.testing.assert_allclose(obs_v[k][i], obs_e[i][k], rtol=1e-5, atol=1e-6)
        a = rng.uniform(-1, 1, (3,) + vec.action_space.shape).astype(np.float32)
        obs_v, rew_v, done_v, infos = vec.step(a)
        for i, e in enumerate(envs):
            o, r, term, trunc, _ = e.step(a[i])
            assert r == pytest.approx(float(rew_v[i]), rel=1e-4, abs=1e-6)
            assert bool(done_v[i]) == (term or trunc)
            if term or trunc:
                for k in o:
                    np.testing.assert_allclose(infos[i]["terminal_observation"][k], o[k],
                                               rtol=1e-5, atol=1e-6)
                o, _ = e.reset()
            obs_e[i] = o


def test_a_destroyed_simulated_model_keeps_rewards_and_observations_finite(monkeypatch):
    from fedlib.rl import sim as simmod
    original = simmod.Simulator.craft

    def huge(self, rows, actions):               # finite uploads that overflow the model
        crafted, info = original(self, rows, actions)
        return torch.full_like(crafted, 3e38), info

    monkeypatch.setattr(simmod.Simulator, "craft", huge)
    env = PoisoningEnv(cfg(aggregator="mean", num_attackers=40, horizon=8))
    steps = run(env, [np.ones(28, dtype=np.float32)] * 8)
    rewards = [r for _, r, _ in steps[1:]]
    assert all(np.isfinite(rewards)) and max(rewards) > 0
    assert all(np.isfinite(obs["last_layer"]).all() for obs, _, _ in steps)
    assert torch.isfinite(env.sim.theta).all()


# --------------------------------------------------------------------------- Romoa's protocol
ROMOA = dict(protocol="romoa", aggregator="romoa", num_clients=10, clients_per_round=10,
             num_attackers=3, tau=2, horizon=5)


def test_romoa_protocol_env_passes_checkers_and_observes_the_attackers_weight():
    env = PoisoningEnv(cfg(**ROMOA))
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(PoisoningEnv(cfg(**ROMOA)), warn=True)
    obs, _ = env.reset(seed=0)
    assert obs["attackers"] == 3 and obs["attacker_weight"][0] == 0.0
    weights = []
    for _ in range(4):                                   # syncs after iterations 2 and 4
        obs, r, *_ = env.step(np.full(28, 0.5, np.float32))
        weights.append(float(obs["attacker_weight"][0]))
        assert obs["attackers"] == 3 and np.isfinite(r)
    assert 0.0 < weights[1] <= 1.0                       # the server's factors, revealed
    assert env.sim.round[0] == 4


def test_romoa_protocol_vecenv_equals_envs_and_bad_settings_fail():
    c = cfg(**{**ROMOA, "aggregator": "rfa"})
    vec = PoisoningVecEnv(c, seeds=[1, 2])
    envs = [PoisoningEnv(dataclasses.replace(c, seed=s)) for s in (1, 2)]
    vec.reset()
    [e.reset() for e in envs]
    a = np.random.default_rng(0).uniform(-1, 1, (2, 28)).astype(np.float32)
    for _ in range(3):
        obs_v, rew_v, _, _ = vec.step(a)
        for i, e in enumerate(envs):
            o, r, *_ = e.step(a[i])
            assert r == pytest.approx(float(rew_v[i]), rel=1e-4, abs=1e-6)
            np.testing.assert_allclose(obs_v["attacker_weight"][i], o["attacker_weight"],
                                       atol=1e-6)
    with pytest.raises(ValueError, match="protocol 'sync'"):
        cfg(aggregator="romoa")
    with pytest.raises(ValueError, match="every participant"):
        cfg(**{**ROMOA, "clients_per_round": 5})


# --------------------------------------------------------------------------- PolicyAttack
class ConstantPolicy:
    def __init__(self, a):
        self.a, self.seen = np.asarray(a, np.float32), []

    def act(self, obs):
        self.seen.append(obs)
        return self.a


def test_policy_attack_executes_a_policy_in_a_real_lookahead_run():
    from fedlib.federation import Federation
    from fedlib.rl import PolicyAttack
    run_cfg = dict(dataset="synthetic", model="synthetic-mlp", protocol="romoa", num_clients=10,
                   num_attackers=3, aggregator="romoa", tau=2, lr=0.05, batch_size=32,
                   attack="none", device="cpu", seed=0)
    fed = Federation.from_config(run_cfg)
    c = cfg(**ROMOA)
    policy = ConstantPolicy(np.full(28, 0.3))
    attack = PolicyAttack(policy, c)
    for _ in range(4):
        out = fed.step(malicious=attack)
        crafted = out.uploads[0][out.is_malicious[0]]
        assert crafted.shape == (3, 28) and torch.equal(crafted[0], crafted[2])
        # the simulator's own crafting of the same action at the same model
        expect, _ = attack.sim.craft([0], torch.full((1, 28), 0.3))
        torch.testing.assert_close(crafted[0], expect[0].to(crafted))
    obs = policy.seen
    assert [o["attackers"] for o in obs] == [3] * 4
    assert obs[0]["attacker_weight"][0] == 0.0 and obs[3]["attacker_weight"][0] > 0.0
    assert all(PoisoningEnv(c).observation_space.contains(o) for o in obs)
    with pytest.raises(ValueError, match="act"):
        PolicyAttack(object(), c)


def test_vecenv_with_many_replicas_on_separate_clocks_steps_krum():
    """Subsets of replicas advance alone (attack_step); a subset's rule weights never leak into
    another replica's probe of the rule."""
    c = cfg(action="gamma_E", aggregator="krum", horizon=9, num_attackers=5)   # m = 0 often
    vec = PoisoningVecEnv(c, num_envs=8)
    vec.reset()
    for _ in range(8):
        vec.step(np.zeros((8, 2), np.float32))
    assert len(set(vec.sim.round)) > 1                   # the clocks did drift apart


@pytest.mark.parametrize("rule, params", [("krum", {"f": 2}), ("krum", {}),
                                          ("trimmed_mean", {})])
def test_count_rules_can_be_simulated_under_romoas_protocol(rule, params):
    env = PoisoningEnv(cfg(**{**ROMOA, "aggregator": rule, "aggregator_params": params}))
    env.reset(seed=0)
    _, r, *_ = env.step(np.zeros(28, np.float32))
    assert np.isfinite(r) and env.sim.last[0]["f"] == (params.get("f") or 3)


@pytest.mark.parametrize("kw", [ROMOA, dict(action="full", aggregator="centered_clipping")],
                         ids=["romoa-protocol", "centered-clipping"])
def test_simulator_state_restores_protocol_and_rule_state(kw):
    """get_state/set_state carry Romoa's participant states and factors and centered clipping's
    momentum: a fresh simulator continues exactly as the original."""
    c = cfg(**{**kw, "horizon": 12})
    a = np.random.default_rng(1).uniform(-1, 1, (6, 1, 28)).astype(np.float32)
    vec = PoisoningVecEnv(c, seeds=[3])
    vec.reset()
    for k in range(3):
        vec.step(a[k])
    state = vec.get_state()
    after = [vec.step(a[k])[:2] for k in range(3, 6)]
    fresh = PoisoningVecEnv(c, seeds=[3])
    fresh.reset()
    fresh.set_state(state)
    again = [fresh.step(a[k])[:2] for k in range(3, 6)]
    for (o1, r1), (o2, r2) in zip(after, again):
        assert np.array_equal(r1, r2) and all(np.array_equal(o1[k], o2[k]) for k in o1)
