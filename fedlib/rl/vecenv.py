"""``PoisoningVecEnv``: B episodes of :class:`fedlib.rl.env.PoisoningEnv` as one batched simulation.

A stable-baselines3 ``VecEnv`` whose replica i behaves exactly as ``PoisoningEnv`` with seed
``seeds[i]`` (default ``config.seed + i``): the same draws, observations and rewards (to float
round-off of the batched gradient calls). All replicas share the horizon, so they end their
episodes together and are reset automatically (SB3 convention: the returned observation is the
new episode's, the last one is in ``infos[i]["terminal_observation"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from ..engine import seed_for
from .config import EnvConfig
from .env import observation_space, policy_action_space
from .sim import Simulator


class PoisoningVecEnv(VecEnv):
    """B replicas of the attackers' simulator stepped together (module docstring)."""

    render_mode = None

    def __init__(self, config: EnvConfig, num_envs: int = 1, seeds: Sequence[int] | None = None):
        if seeds is None:
            if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
                raise ValueError(f"num_envs must be an integer ≥ 1, got {num_envs!r}")
            seeds = [config.seed + i for i in range(num_envs)]
        self.config = config
        self.sim = Simulator(config, list(seeds))
        self._actions: torch.Tensor | None = None
        super().__init__(len(seeds), observation_space(config), policy_action_space(config))

    def _obs(self) -> dict[str, np.ndarray]:
        obs = self.sim.observation()
        return {k: (v.numpy().astype(np.int64) if k == "attackers" else v.numpy())
                for k, v in obs.items()}

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every replica (seeds given through ``seed()`` restart the episode count)."""
        self.sim.reset(list(range(self.num_envs)), self._seeds)
        self._reset_seeds()
        self._reset_options()
        return self._obs()

    def seed(self, seed: int | None = None) -> list[int | None]:
        """Seed replica i with a seed derived from (config.seed, seed, i) at the next reset."""
        if seed is None:
            return [None] * self.num_envs
        self._seeds = [seed_for(self.config.seed, "vec", int(seed), i)
                       for i in range(self.num_envs)]
        return list(self._seeds)

    def step_async(self, actions: np.ndarray) -> None:
        a = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1)
        if a.shape[1] != self.action_space.shape[0]:
            raise ValueError(f"actions must be ({self.num_envs}, {self.action_space.shape[0]}), "
                             f"got {np.shape(actions)}")
        self._actions = torch.from_numpy(a.copy())

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        reward, done = self.sim.step(self._actions)
        self._actions = None
        obs = self._obs()
        infos: list[dict[str, Any]] = [
            {"round": self.sim.round[i], "loss": float(self.sim.cur_loss[i]),
             **{k: v for k, v in self.sim.last[i].items()
                if k in ("f", "num_attackers", "gamma", "E", "lambda")}}
            for i in range(self.num_envs)]
        dones = done.numpy().astype(bool)
        if dones.any():
            rows = [i for i in range(self.num_envs) if dones[i]]
            for i in rows:
                infos[i]["terminal_observation"] = {k: v[i].copy() for k, v in obs.items()}
                infos[i]["TimeLimit.truncated"] = not self.config.time_feature
            self.sim.reset(rows)
            obs = self._obs()
        return obs, reward.numpy().astype(np.float32), dones, infos

    def close(self) -> None:
        return None

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None,
                   **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs)
                for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_state(self) -> dict[str, Any]:
        """The simulation state (for checkpoints)."""
        return self.sim.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`."""
        self.sim.set_state(state)
