"""fedlib.rl.train_policy: learns, reproduces, resumes after a kill, saves safely."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from stable_baselines3.common.callbacks import BaseCallback

from fedlib.rl import PoisoningEnv, TrainedPolicy, synthetic_env_config, train_policy
from fedlib.rl.train import default_num_envs

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw):
    base = dict(num_samples=300, holdout_size=300, horizon=20, aggregator="krum", num_attackers=40)
    base.update(kw)
    return synthetic_env_config(**base)


def episode_return(cfg, policy, seed: int, episodes: int = 3) -> float:
    env = PoisoningEnv(cfg)
    total = 0.0
    for e in range(episodes):
        obs, _ = env.reset(seed=seed) if e == 0 else env.reset()
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs))
            total += r
            done = term or trunc
    return total / episodes


def params(policy: TrainedPolicy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.policy.state_dict().items()}


def assert_same(p: dict, q: dict) -> None:
    assert p.keys() == q.keys()
    for k in p:
        assert torch.equal(p[k], q[k]), k


def test_short_td3_on_synthetic_krum_beats_a_random_policy():
    cfg = small()
    policy = train_policy(cfg, steps=600, seed=0, checkpoint_every=600, progress=False)
    rng = np.random.default_rng(0)
    random_policy = lambda obs: rng.uniform(-1, 1, 28).astype(np.float32)  # noqa: E731
    learned = episode_return(cfg, policy.act, seed=100)
    baseline = episode_return(cfg, random_policy, seed=100)
    assert learned > baseline + 1.0, (learned, baseline)


def test_same_seed_same_policy_and_caller_rng_untouched():
    cfg = small(horizon=10)
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002  (the global stream SB3 uses)
    expected_t, expected_n = torch.rand(3), np.random.rand(3)  # noqa: NPY002
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    a = train_policy(cfg, steps=200, seed=7, checkpoint_every=100, progress=False)
    assert torch.equal(torch.rand(3), expected_t)
    assert np.array_equal(np.random.rand(3), expected_n)  # noqa: NPY002
    b = train_policy(cfg, steps=200, seed=7, checkpoint_every=100, progress=False)
    assert_same(params(a), params(b))
    c = train_policy(cfg, steps=200, seed=8, checkpoint_every=100, progress=False)
    assert any(not torch.equal(params(a)[k], params(c)[k]) for k in params(a))


_KILLED_RUN = """
import os, signal, sys, torch
torch.set_num_threads(1)
from stable_baselines3.common.callbacks import BaseCallback
from fedlib.rl import synthetic_env_config, train_policy

class Kill(BaseCallback):
    def _on_step(self):
        if self.num_timesteps >= 250:          # between the checkpoints at 200 and 300
            os.kill(os.getpid(), signal.SIGKILL)
        return True

cfg = synthetic_env_config(num_samples=300, holdout_size=300, horizon=20, aggregator="krum",
                           num_attackers=40)
train_policy(cfg, steps=400, seed=3, checkpoint_dir=sys.argv[1], checkpoint_every=100,
             progress=False, callback=Kill())
"""


def test_killed_training_resumes_to_the_uninterrupted_policy(tmp_path):
    cfg = small()
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_RUN), str(ckpt)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]                # it really was killed
    saved = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    assert saved["num_timesteps"] == 200
    assert not [p for p in ckpt.iterdir() if p.name != "checkpoint.pt"]   # no torn temp files
    resumed = train_policy(cfg, steps=400, seed=3, checkpoint_dir=ckpt, checkpoint_every=100,
                           progress=False)
    straight = train_policy(cfg, steps=400, seed=3, checkpoint_every=100, progress=False)
    assert resumed.num_timesteps == straight.num_timesteps == 400
    assert_same(params(resumed), params(straight))
    with pytest.raises(ValueError, match="different configuration"):
        train_policy(cfg, steps=400, seed=4, checkpoint_dir=ckpt, checkpoint_every=100,
                     progress=False)


def test_policy_save_load_round_trip_and_refuses_foreign_files(tmp_path):
    cfg = small(horizon=5)
    policy = train_policy(cfg, steps=110, seed=1, checkpoint_every=110, progress=False,
                          algo_kwargs={"learning_starts": 50})
    path = tmp_path / "policy.pt"
    policy.save(path)
    loaded = TrainedPolicy.load(path)
    env = PoisoningEnv(cfg)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(policy.act(obs), loaded.act(obs))
    assert loaded.act(obs).shape == (28,) and np.all(np.abs(loaded.act(obs)) <= 1)
    evil = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil.write_bytes(pickle.dumps({"format": "fedlib.rl.TrainedPolicy/1", "x": Boom()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        TrainedPolicy.load(evil)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a policy"):
        TrainedPolicy.load(tmp_path / "other.pt")


class _Counts(BaseCallback):
    """Records the replicas SB3 steps and its gradient-step count at the end of training."""

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.num_envs = self.training_env.num_envs
        self.n_updates, self.num_timesteps = self.model._n_updates, self.model.num_timesteps


@pytest.mark.parametrize(("steps", "every", "replicas"), [(80, 40, 8), (40, 20, 4), (30, 30, 2)])
def test_td3_steps_replicas_by_default_with_one_gradient_step_per_transition(steps, every,
                                                                            replicas):
    counts = _Counts()
    policy = train_policy(small(horizon=10), steps=steps, seed=0, checkpoint_every=every,
                          progress=False, callback=counts, algo_kwargs={"learning_starts": 0})
    assert counts.num_envs == replicas
    assert policy.num_timesteps == counts.num_timesteps == steps
    assert counts.n_updates == steps                      # App. E.1: gradient_steps = transitions
    assert default_num_envs("td3", steps, every) == replicas
    assert policy.policy.actor.optimizer.defaults["fused"] is True          # same Adam, one kernel
    assert policy.policy.critic.optimizer.defaults["fused"] is True
    assert default_num_envs("ppo", 8000, 1000) == 1
    assert default_num_envs("td3", 8000, 1000) == 8
    assert default_num_envs("td3", 8000, 1000, (1, "episode")) == 1


def test_ppo_and_two_replicas_train_and_bad_arguments_are_rejected():
    cfg = small(horizon=8)
    policy = train_policy(cfg, algo="ppo", steps=64, seed=0, checkpoint_every=64, progress=False,
                          algo_kwargs={"n_steps": 32, "batch_size": 16, "n_epochs": 1})
    assert policy.algo == "ppo" and policy.num_timesteps == 64
    two = train_policy(cfg, steps=140, num_envs=2, checkpoint_every=70, progress=False,
                       algo_kwargs={"learning_starts": 40})          # one VecEnv, two replicas
    assert two.num_timesteps == 140
    with pytest.raises(ValueError, match="algo"):
        train_policy(cfg, algo="sac", steps=10)
    with pytest.raises(ValueError, match="multiples"):
        train_policy(cfg, steps=12, checkpoint_every=12)
    with pytest.raises(ValueError, match="lr"):
        train_policy(cfg, steps=10, lr=float("nan"))
