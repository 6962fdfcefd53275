"""``PoisoningEnv``: L2A §4.1's MDP as the attackers simulate it (§4.3), a gymnasium ≥ 1.0 env.

* **State / observation** (§4.3's compression): ``"last_layer"``, the last layer's weight and
  bias of the current global model min-max scaled to [−1, 1]; ``"attackers"``, m ∈ {0..w}, the
  number of attackers the server sampled for this round; with ``time_feature`` (default) also
  ``"progress"`` = τ/H; under Romoa's protocol also ``"attacker_weight"`` (see
  :attr:`fedlib.rl.EnvConfig.protocol`).
* **Steps** (``step_unit``): ``"attack_step"`` (default, §4.1 literally) — one step per round
  t(τ) with at least one sampled attacker; the attacker-free rounds up to t(τ + 1) belong to the
  transition and are simulated inside the step, so every transition's action matters and m ≥ 1
  in every observation. ``"round"`` — one step per FL round, as the authors' 1,000-epoch
  episodes; in rounds with m = 0 the action is ignored.
* **Reward** (§4.1): r^τ = f(θ^{t(τ+1)}) − f(θ^{t(τ)}), the increase of the cross-entropy on the
  attackers' held-out data; over an episode the rewards sum to f(θ_end) − f(θ_start).
* **Horizon**: H steps. With ``time_feature`` the episode ends ``terminated=True`` at τ = H (a
  finite-horizon MDP whose state holds τ/H, so γ_RL = 1 is well defined); without it the
  observation is the paper's state only and the episode ends ``truncated=True`` (a time limit).
* **Episodes** restart from θ₀; client sampling and minibatches are re-drawn each episode from
  (seed, episode) — ``reset(seed=s)`` restarts the episode count at s.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .actions import action_space
from .config import EnvConfig
from .sim import Simulator


def observation_space(config: EnvConfig) -> gym.spaces.Dict:
    """The observation ``Dict`` of :class:`PoisoningEnv` for ``config``."""
    spec = config.spec()
    sl = spec.layers[-1][1]
    parts: dict[str, gym.spaces.Space] = {
        "last_layer": gym.spaces.Box(-1.0, 1.0, (sl.stop - sl.start,), dtype=np.float32),
        "attackers": gym.spaces.Discrete(config.clients_per_round + 1),
    }
    if config.time_feature:
        parts["progress"] = gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32)
    if config.protocol == "romoa":
        parts["attacker_weight"] = gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32)
    return gym.spaces.Dict(parts)


def policy_action_space(config: EnvConfig) -> gym.spaces.Box:
    """The action box [−1, 1]^k of :class:`PoisoningEnv` for ``config``."""
    return action_space(config.action, config.spec().dim)


def row_obs(obs: dict[str, torch.Tensor], i: int) -> dict[str, Any]:
    """Replica i's observation as numpy values matching :func:`observation_space`."""
    out: dict[str, Any] = {"last_layer": obs["last_layer"][i].numpy().astype(np.float32),
                           "attackers": np.int64(obs["attackers"][i])}
    for key in ("progress", "attacker_weight"):
        if key in obs:
            out[key] = obs[key][i].numpy().astype(np.float32)
    return out


class PoisoningEnv(gym.Env):
    """The attackers' simulator as a gymnasium env (module docstring); one replica."""

    metadata = {"render_modes": []}
    render_mode = None

    def __init__(self, config: EnvConfig):
        super().__init__()
        self.config = config
        self.sim = Simulator(config, [config.seed])
        self.observation_space = observation_space(config)
        self.action_space = policy_action_space(config)

    def reset(self, *, seed: int | None = None, options: dict | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode at θ₀ (``seed`` restarts the episode count from that seed)."""
        super().reset(seed=seed)
        self.sim.reset([0], [seed])
        return row_obs(self.sim.observation(), 0), self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        """One attack step (or round): gymnasium's 5-tuple."""
        a = np.asarray(action, dtype=np.float32).reshape(1, -1)
        if a.shape[1] != self.action_space.shape[0]:
            raise ValueError(f"action must have {self.action_space.shape[0]} entries, "
                             f"got {a.shape[1]}")
        reward, done = self.sim.step(torch.from_numpy(a))
        end = bool(done[0])
        term, trunc = (end, False) if self.config.time_feature else (False, end)
        return row_obs(self.sim.observation(), 0), float(reward[0]), term, trunc, self._info()

    def _info(self) -> dict[str, Any]:
        last = self.sim.last[0]
        return {"round": self.sim.round[0], "loss": float(self.sim.cur_loss[0]),
                **{k: last[k] for k in ("f", "num_attackers", "gamma", "E", "lambda") if k in last}}
