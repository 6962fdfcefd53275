"""A trained policy as an attack in real runs: L2A's phase 3 (§4.4) without phases 1–2.

``PolicyAttack(policy, config)`` executes a policy trained beforehand in the simulator that
``config`` describes (e.g. ``train_policy(config, ...)`` with P̃ = the attackers' own data): in
every round with ≥ 1 sampled attacker it observes the real global model exactly as the simulator
does (:meth:`PolicyAttack.observation`), takes the policy's deterministic action and crafts the
update with the simulator's own :meth:`fedlib.rl.sim.Simulator.craft`; all m sampled attackers send
it. It sees only what the threat model grants (the model they received, their count, the rule's
weights where the protocol reveals them) and never the benign updates. ``attacks.get("rl")`` is the
full online attack that also learns P̃ and the policy during the run (:mod:`fedlib.rl.online`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..context import AttackContext
from ..engine import seed_for
from .config import EnvConfig
from .env import row_obs
from .sim import Simulator, attackers_weight, scale_last_layer


def execution_simulator(config: EnvConfig, seed: int) -> Simulator:
    """The one-replica simulator whose crafting phase 3 reuses (episode 0 of ``seed``)."""
    sim = Simulator(config, [seed_for(seed, "execute") % 2**31])
    sim.episode[0] = 0
    return sim


def real_observation(sim: Simulator, theta: Tensor, m: int, tau: int,
                     weight: float = 0.0) -> dict[str, Any]:
    """The simulator's observation (L2A §4.3) of a real round: θ's last layer scaled to [−1, 1],
    the m sampled attackers, τ/H at attack step (or round) τ, and under Romoa's protocol the
    attackers' weight in the last aggregation."""
    cfg = sim.cfg
    obs: dict[str, Tensor] = {
        "last_layer": scale_last_layer(theta.detach().cpu()[None, sim.last_slice]).float(),
        "attackers": torch.tensor([min(m, cfg.clients_per_round)])}
    if cfg.time_feature:
        obs["progress"] = torch.tensor([[min(tau / cfg.horizon, 1.0)]], dtype=torch.float32)
    if cfg.protocol == "romoa":
        obs["attacker_weight"] = torch.tensor([[weight]], dtype=torch.float32)
    return row_obs(obs, 0)


def craft_real(sim: Simulator, theta: Tensor, round: int, action: np.ndarray
               ) -> tuple[Tensor, dict[str, float]]:
    """The update (d,) the simulator crafts for ``action`` at the real θ of ``round``."""
    sim.theta[0] = theta.detach().cpu().to(sim.theta.dtype)
    sim.round[0] = int(round)
    update, info = sim.craft([0], torch.from_numpy(np.asarray(action, np.float32).reshape(1, -1)))
    return update[0], {k: float(v[0]) for k, v in info.items()}


class PolicyAttack:
    """Execute a trained policy as the attackers' hook (module docstring)."""

    name = "rl_policy"
    reads_honest_updates = False

    def __init__(self, policy: Any, config: EnvConfig, seed: int = 0):
        if not callable(getattr(policy, "act", None)):
            raise ValueError("policy must have act(obs) (e.g. a fedlib.rl.TrainedPolicy)")
        self.policy, self.config = policy, config
        self.sim = execution_simulator(config, seed)
        self.steps = 0
        self.log: list[dict[str, Any]] = []

    def observation(self, ctx: AttackContext) -> dict[str, Any]:
        """The simulator's observation of the real round (see :func:`real_observation`)."""
        tau = self.steps if self.config.step_unit == "attack_step" else int(ctx.round)
        return real_observation(self.sim, ctx.theta, ctx.num_malicious, tau, self._weight(ctx))

    def _weight(self, ctx: AttackContext) -> float:
        """The attackers' total weight in the server's last aggregation (0 before the first)."""
        share = attackers_weight(getattr(ctx.aggregator, "weights", None),
                                 ctx.num_attackers_total)
        return 0.0 if ctx.round == 0 or share is None else min(max(share, 0.0), 1.0)

    def __call__(self, ctx: AttackContext) -> Tensor:
        """The crafted update of this round, sent by all m sampled attackers: (m, d)."""
        action = np.asarray(self.policy.act(self.observation(ctx)), dtype=np.float32)
        update, info = craft_real(self.sim, ctx.theta, ctx.round, action)
        self.steps += 1
        self.log.append({"round": int(ctx.round), "m": ctx.num_malicious,
                         "action": action.reshape(-1).tolist(), **info})
        return update.to(ctx.theta).expand(ctx.num_malicious, -1).clone()
