"""L2A's online three-phase attack in a real federation (Li et al., NeurIPS'22, §3, §4.4, App. E.1).

``fedlib.attacks.get("rl", ...)`` returns an :class:`OnlineRL`, an attack object like any other
(``attack(ctx) -> (m, d)``), so ``fedlib.runs.run(dict(..., attack="rl", attack_params={...}))``
runs it against every rule. It is called only in rounds where at least one attacker is sampled,
and in each such round t it runs the three phases that apply:

1. **Distribution learning** (§4.2, Algorithm 2), rounds 0 … τ_E − 1 (``learn_rounds``, 100): the
   leader records ctx.θ, the model the sampled attackers received, forms ḡ between consecutive
   such models and inverts it into B′ denoised images per FL round with
   :class:`fedlib.inversion.DistributionLearner`. The rounds without a sampled attacker in
   between are caught up at the next call, reusing the ḡ of that time (Algorithm 2's "reuse the
   most recent model parameters"), so the learned set is the one the round-callback learner
   builds. The attackers upload their honest updates (no poisoning) until ``attack_start``.
2. **Policy learning** (§4.3) in the attackers' simulator :class:`fedlib.rl.EnvConfig` built from
   the current P̃, refreshed as P̃ grows: by real round t the policy has been trained for
   :func:`scheduled_steps` = min(initial + ⌊t / refresh_every⌋ · refresh_steps, total) steps
   (the authors' schedule: ⌊t/5⌋ · 1,000, so Krum's 80,000 steps end at round 400). Each refresh
   trains the missing steps with :func:`train_refresh` (TD3 by default, warm-started from the
   previous policy; the replay buffer restarts because the simulator changed).
3. **Attack execution** (§4.4) from ``attack_start`` (100) on: the latest policy maps the
   observation of ctx.θ (last layer min-max scaled, m, and τ/H) to an action, which is crafted
   into one update exactly as in the simulator (:mod:`fedlib.rl.actions`) and sent by all m
   sampled attackers. Before any policy step is trained the attackers stay honest.

**Variants** (``distribution``): ``"learned"`` (RL: P̃ = the m labelled real samples ∪ the
reconstructions), ``"own"`` (RL w/o DL: P̃ = the attackers' own data, ``own_samples`` of it, no
inversion; the synthetic set and CIFAR-10 in L2A), ``"unlabeled"`` (RL₀: the m real images are
unlabeled and only train the denoiser; P̃ = the reconstructions with their inverted labels, so
policy learning waits for the first reconstruction). The reward's held-out data is the
attackers' labelled real data (the m samples, or the own samples); for RL₀ the reconstructions;
``holdout_size`` caps it at its first rows (a seeded random subset of the real samples; the
reward's loss is then an estimate on fewer images, which is cheaper on large models).
FLTrust (``root``): ``"known"`` — the attackers know the server's root set D₀ (rebuilt in
``prepare(task)`` from ``root_size``, ``root_q0`` and ``seed``, which must equal the run's);
``"sampled"`` — they know only how it is sampled: a q₀-biased root set drawn from P̃.

**Threat model.** The attack reads ctx.θ, ctx.round, ctx.lr, ctx.batch_size, ctx.local_steps,
its honest updates, ctx.data (own data), the rule and its parameters (ctx.aggregator) and the
counts K, w, M — never ``ctx.benign_updates`` (tested with a context that raises on that read).
The simulated rule is the real one: a count-dependent rule built with ``f="per_call"`` is
simulated with f = the number of attackers sampled, a fixed f as it is; rules the simulator does
not model (Romoa, weighted mean) are simulated as the mean with a ``RuntimeWarning``
(``rule=`` overrides the choice).

**Checkpoints.** :meth:`OnlineRL.state_dict` (:mod:`fedlib.rl.online_state`) is checkpointed with
the federation; on restore the simulator of the last refresh is rebuilt from the config (P̃ only
grows: its first rows are the refresh's) and the run continues bit-identically on CPU. A custom
``trainer``'s policy that is not a ``TrainedPolicy`` cannot be stored (the run warns, runs on).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .. import data as fdata
from .. import models
from ..attacks.base import (Attack, check_finite_output, repeat_rows,
                            stealth_at, stealth_mix)
from ..context import AttackContext
from ..engine import seed_for
from .config import EnvConfig
from .online_state import attack_state, load_attack_state
from .policy_attack import craft_real, execution_simulator, real_observation
from .sim import Simulator
from .simulated import infer_model, simulated_rule

__all__ = ["OnlineRL", "scheduled_steps", "train_refresh", "DISTRIBUTIONS", "ROOT_KNOWLEDGE"]

DISTRIBUTIONS = ("learned", "own", "unlabeled")
ROOT_KNOWLEDGE = ("known", "sampled")
_SET_BY_ATTACK = {"data", "holdout", "theta0", "model", "width", "num_classes", "aggregator",
                  "aggregator_params", "lr", "batch_size", "local_steps", "root", "seed"}
"""EnvConfig fields the attack fills from what it observes (not settable through ``env``)."""
Trainer = Callable[..., Any]
"""(env_config, steps, seed, init) -> a policy with ``act(obs)`` and ``num_timesteps``."""


def scheduled_steps(t: int, refresh_every: int, refresh_steps: int, total: int,
                    initial: int = 0) -> int:
    """L2A App. E.1, authors' schedule: steps by round t = min(initial + ⌊t/5⌋·1000, total)."""
    if t < 0 or refresh_every < 1 or refresh_steps < 0 or total < 0 or initial < 0:
        raise ValueError(f"need t ≥ 0, refresh_every ≥ 1 and non-negative steps; got t={t}, "
                         f"refresh_every={refresh_every}, refresh_steps={refresh_steps}, "
                         f"total={total}, initial={initial}")
    return min(initial + (t // refresh_every) * refresh_steps, total)


def train_refresh(env_config: EnvConfig, steps: int, seed: int, init: Any = None, **kw: Any) -> Any:
    """One policy refresh (L2A §4.3–4.4): ``train_policy`` for ``steps``, warm-started at init."""
    from stable_baselines3.common.callbacks import BaseCallback

    from .train import train_policy

    class _WarmStart(BaseCallback):
        """Loads the previous policy's weights into the new learner once, before its first step."""

        def __init__(self) -> None:
            super().__init__()
            self.done = False

        def _on_training_start(self) -> None:
            if not self.done and init is not None:
                self.model.policy.load_state_dict(init.policy.state_dict())
            self.done = True

        def _on_step(self) -> bool:
            return True

    if init is not None and kw.get("algo", "td3") == "td3":
        # a warm-started learner has started already: a refresh of a few hundred steps must
        # not spend them all waiting for TD3's learning_starts before its first update
        kw["algo_kwargs"] = {"learning_starts": 0, **(kw.get("algo_kwargs") or {})}
    policy = train_policy(env_config, steps=steps, seed=seed, checkpoint_every=steps,
                          callback=_WarmStart(), **kw)
    policy.num_timesteps = steps + int(getattr(init, "num_timesteps", 0) or 0)
    return policy


class OnlineRL(Attack):
    """L2A's online RL attack (module docstring); ``log`` records every executed round."""

    name = "rl"
    knowledge = "partial"

    def __init__(self, distribution: str = "learned", *, samples: int = 200,
                 own_samples: Optional[int] = None, holdout_size: Optional[int] = None,
                 learn_rounds: int = 100,
                 attack_start: int = 100, refresh_every: int = 5, refresh_steps: int = 1000,
                 initial_steps: int = 0, policy_steps: Optional[int] = None,
                 algo: str = "td3", policy_lr: float = 1e-3, num_envs: int = 1,
                 algo_kwargs: Optional[dict] = None, horizon: Optional[int] = None,
                 env: Optional[dict] = None, rule: Optional[str] = None,
                 rule_params: Optional[dict] = None, model: Optional[str] = None,
                 width: float = 1.0, root: str = "known", root_size: int = 100,
                 root_q0: Optional[float] = None, inversion: Optional[dict] = None,
                 trainer: Optional[Trainer] = None, seed: int = 0, stealth: Any = 1.0,
                 stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if root not in ROOT_KNOWLEDGE:
            raise ValueError(f"root must be one of {ROOT_KNOWLEDGE}, got {root!r}")
        ints = dict(samples=samples, learn_rounds=learn_rounds, attack_start=attack_start,
                    refresh_every=refresh_every, refresh_steps=refresh_steps,
                    initial_steps=initial_steps, num_envs=num_envs, root_size=root_size)
        for key, v in ints.items():
            low = 1 if key in ("samples", "refresh_every", "num_envs", "root_size") else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{key} must be an integer ≥ {low}, got {v!r}")
        for key, v in (("own_samples", own_samples), ("holdout_size", holdout_size),
                       ("policy_steps", policy_steps), ("horizon", horizon)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{key} must be None or an integer ≥ 1, got {v!r}")
        if algo not in ("td3", "ppo"):
            raise ValueError(f"algo must be 'td3' or 'ppo', got {algo!r}")
        if not (isinstance(policy_lr, (int, float)) and np.isfinite(policy_lr) and policy_lr > 0):
            raise ValueError(f"policy_lr must be a finite number > 0, got {policy_lr!r}")
        fixed = sorted(set(env or {}) & _SET_BY_ATTACK)
        if fixed:
            raise ValueError(f"env may not set {fixed}: the attack takes them from the federation")
        if trainer is not None and not callable(trainer):
            raise ValueError("trainer must be callable (env_config, steps, seed, init) -> policy")
        self.distribution, self.samples, self.own_samples = distribution, samples, own_samples
        self.holdout_size = holdout_size
        self.learn_rounds = learn_rounds if distribution != "own" else 0
        self.attack_start, self.refresh_every, self.refresh_steps = \
            attack_start, refresh_every, refresh_steps
        self.initial_steps, self.policy_steps = initial_steps, policy_steps
        self.train_kw = dict(algo=algo, lr=float(policy_lr), num_envs=num_envs,
                             algo_kwargs=dict(algo_kwargs or {}), progress=False)
        self.horizon, self.env_kw = horizon, dict(env or {})
        self.rule, self.rule_params = rule, rule_params
        self.model, self.width = model, float(width)
        self.root, self.root_size, self.root_q0 = root, root_size, root_q0
        self.inversion_kw = dict(inversion or {})
        self.trainer, self.seed = trainer, int(seed)
        self.learner: Any = None
        self.policy: Any = None
        self.trained = 0
        """Policy steps trained so far."""
        self.log: list[dict[str, Any]] = []
        """One row per executed attack round: round, m, action, the decoded γ/E/λ, policy steps."""
        self.refreshes: list[dict[str, Any]] = []
        """One row per policy refresh: round, steps added, total steps, |P̃|."""
        self._root: Optional[tuple[Tensor, Tensor]] = None
        self._root_error = ""
        self._ready = False
        self._calls = 0
        self._next_round = 0
        self._sim: Optional[Simulator] = None

    # ------------------------------------------------------------------ setup
    def prepare(self, task: Any) -> None:
        """FLTrust's root set D₀ as the attackers know it (``root="known"``; Cao et al.)."""
        q0 = self.root_q0 if self.root_q0 is not None else 1.0 / task.num_classes
        try:                                  # only FLTrust runs need it: complain when used
            idx = fdata.root_set(task.y_train.cpu().numpy(), self.root_size, q0, seed=self.seed)
        except ValueError as err:
            self._root_error = f" (prepare could not build it: {err})"
            return
        idx = torch.as_tensor(idx, dtype=torch.long, device=task.y_train.device)
        self._root = (task.x_train[idx].cpu(), task.y_train[idx].cpu())

    def _setup(self, ctx: AttackContext) -> None:
        """First call: the attackers' samples, the simulated rule, θ₀ and the learner."""
        x_own, y_own = (t.detach().cpu() for t in ctx.data)
        if len(x_own) == 0:
            raise ValueError("the RL attack needs the attackers' own data (ctx.data is empty)")
        self.classes = int(ctx.spec.shapes[-1][0])
        self.model_name = self.model or infer_model(ctx.spec, tuple(x_own.shape[1:]), self.width)
        self.rule_name, self.params = simulated_rule(ctx.aggregator, self.rule, self.rule_params)
        counts = dict(num_clients=ctx.population, clients_per_round=ctx.num_clients,
                      num_attackers=ctx.num_attackers_total)
        counts.update({k: v for k, v in self.env_kw.items() if k in counts})
        missing = [k for k, v in counts.items() if v is None]
        if missing:
            raise ValueError(f"the RL attack needs the federation's counts {missing} (K, w, M): "
                             "the context does not give them; pass them in attack_params env")
        self.counts = counts
        if self.rule_name == "fltrust" and self.root == "known" and self._root is None:
            raise ValueError('root="known" needs prepare(task) before the run (fedlib.runs does '
                             f'this) or root="sampled"{self._root_error}')
        self.ctx_lr, self.ctx_batch, self.ctx_steps = ctx.lr, ctx.batch_size, ctx.local_steps
        self.theta0 = ctx.theta.detach().cpu().clone()          # App. E.1: episodes start here
        if self.distribution == "own":
            n = len(x_own) if self.own_samples is None else min(self.own_samples, len(x_own))
            pick = self._draw(len(x_own), n, "own-samples")
        else:
            pick = self._draw(len(x_own), min(self.samples, len(x_own)), "attacker-samples")
        self.x_real, self.y_real = x_own[pick].clone(), y_own[pick].clone()
        if self.learn_rounds > 0:                   # inversion runs where the federation runs
            self.learner = self._new_learner(ctx.theta.device)
        self._ready = True

    def _new_learner(self, dev: torch.device, **override: Any) -> Any:
        """Algorithm 2's learner on the attackers' m samples (RL₀: their labels hidden)."""
        from ..inversion import DistributionLearner
        net = models.build(self.model_name, num_classes=self.classes, width=self.width).to(dev)
        y = self.y_real if self.distribution == "learned" else torch.zeros_like(self.y_real)
        return DistributionLearner(net, self.x_real.to(dev), y.to(dev), rounds=self.learn_rounds,
                                   seed=self.seed, **{**self.inversion_kw, **override})

    def _draw(self, n: int, k: int, purpose: str) -> Tensor:
        """k of n indices without replacement, seeded as ``fedlib.inversion.attacker_samples``."""
        g = torch.Generator().manual_seed(seed_for(self.seed, purpose, k))
        return torch.randperm(n, generator=g)[:k]

    # ------------------------------------------------------------------ P̃ and the simulator
    def learned_distribution(self) -> tuple[Tensor, Tensor]:
        """P̃ (x, y) now (L2A §4.2): the variant's mixture of real samples and reconstructions."""
        if self.distribution == "own" or self.learner is None:
            return self.x_real, self.y_real
        x, y = self.learner.dataset(include_real=self.distribution == "learned")
        return x.cpu(), y.cpu()

    def env_config(self, round: int, size: Optional[int] = None) -> Optional[EnvConfig]:
        """The attackers' simulator (L2A §4.3) from the current P̃ (its first ``size`` rows: P̃
        as it was when it had that size, since it only grows); None while P̃ is empty (RL₀)."""
        x, y = self.learned_distribution()
        if size is not None:
            x, y = x[:size], y[:size]
        if len(x) == 0:
            return None
        holdout = (x, y) if self.distribution == "unlabeled" else (self.x_real, self.y_real)
        holdout = tuple(t[:self.holdout_size] for t in holdout)   # None: all of it
        kw: dict[str, Any] = dict(self.env_kw)
        kw.update(self.counts)
        root = None
        if self.rule_name == "fltrust":
            root = self._root if self.root == "known" else self._sampled_root(y, x)
        horizon = self.horizon or (500 if self.rule_name == "fltrust" else 1000)
        kw.setdefault("horizon", horizon)
        return EnvConfig(data=(x, y), holdout=holdout, theta0=self.theta0, model=self.model_name,
                         width=self.width, num_classes=self.classes, aggregator=self.rule_name,
                         aggregator_params=self.params, lr=self.ctx_lr, batch_size=self.ctx_batch,
                         local_steps=self.ctx_steps, root=root,
                         seed=seed_for(self.seed, "simulator", round) % 2**31, **kw)

    def _sampled_root(self, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """A q₀-biased root set drawn from P̃ (the attackers know only how D₀ is sampled)."""
        q0 = self.root_q0 if self.root_q0 is not None else 1.0 / self.classes
        idx = fdata.root_set(y.numpy(), min(self.root_size, len(y)), q0, seed=self.seed,
                             num_classes=self.classes)
        idx = torch.as_tensor(idx, dtype=torch.long)
        return x[idx], y[idx]

    def total_steps(self) -> int:
        """The policy-learning budget: ``policy_steps`` or App. E.1's default for the setting."""
        if self.policy_steps is not None:
            return self.policy_steps
        from types import SimpleNamespace

        from .train import default_steps                 # reads the model and the rule only
        return default_steps(SimpleNamespace(model=self.model_name, aggregator=self.rule_name))

    def _refresh(self, round: int) -> None:
        """Train the policy up to the schedule's step count for ``round`` on the current P̃."""
        target = scheduled_steps(round, self.refresh_every, self.refresh_steps,
                                 self.total_steps(), self.initial_steps)
        unit = self._unit()
        steps = (target - self.trained) // unit * unit
        if steps <= 0:
            return
        config = self.env_config(round)
        if config is None:
            return
        train = self.trainer if self.trainer is not None else train_refresh
        seed = seed_for(self.seed, "policy", self.trained) % 2**31
        self.policy = train(config, steps, seed, self.policy, **self.train_kw)
        self.trained += steps
        self.refreshes.append({"round": round, "steps": steps, "total": self.trained,
                               "data": len(config.data[0])})
        self._sim = execution_simulator(config, self.seed)

    def _rebuild_simulator(self) -> None:
        """The simulator the last refresh built (as in :meth:`_refresh`), from the config."""
        if self.policy is None or not self.refreshes:
            self._sim = None
            return
        last = self.refreshes[-1]
        self._sim = execution_simulator(self.env_config(last["round"], size=last["data"]),
                                        self.seed)

    def _unit(self) -> int:
        """train_policy's step granularity: train_freq (TD3) or n_steps (PPO) × num_envs."""
        kw = self.train_kw["algo_kwargs"]
        if self.train_kw["algo"] == "ppo":
            base = int(kw.get("n_steps", 2048))
        else:
            freq = kw.get("train_freq", (5, "step"))
            base = int(freq[0] if isinstance(freq, (tuple, list)) else freq)
        return base * self.train_kw["num_envs"]

    # ------------------------------------------------------------------ phases 1–2
    def _learn(self, t: int, theta: Tensor, lr: float) -> None:
        """Algorithm 2 for the rounds up to t (catching up rounds without a sampled attacker)."""
        L = self.learner
        if L is None:
            return
        for r in range(self._next_round, min(t, self.learn_rounds)):
            g = L.aggregate_gradient
            if g is not None and float(g.norm()) > 0:
                L.reconstruct(r, False)
        if t < self.learn_rounds:
            fresh = L.observe(t, theta.detach(), lr)
            g = L.aggregate_gradient
            if g is not None and float(g.norm()) > 0:
                L.reconstruct(t, fresh)

    def observe(self, ctx: AttackContext) -> None:
        """Phases 1–2 for round ``ctx.round``: learn P̃ from ctx.θ, refresh the policy."""
        if not self._ready:
            self._setup(ctx)
        t = int(ctx.round)
        if t < self._next_round:
            raise ValueError(f"the RL attack saw round {t} after round {self._next_round - 1}: "
                             "one attack object serves one federation (replica)")
        self._learn(t, ctx.theta, ctx.lr)
        self._next_round = t + 1
        self._calls += 1
        self._refresh(t)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The attack's state as tensors and plain data (:mod:`fedlib.rl.online_state`)."""
        return attack_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put :meth:`state_dict` onto an attack built from the same config (the learner's
        denoiser loaded, not trained again; the simulator rebuilt; global RNG untouched)."""
        load_attack_state(self, state)
        self._rebuild_simulator()

    # ------------------------------------------------------------------ phase 3
    def observation(self, theta: Tensor, m: int) -> dict[str, Any]:
        """The policy's observation of the real θ (L2A §4.3: last layer scaled, m, τ/H)."""
        cfg = self._sim.cfg
        tau = self._calls - 1 if cfg.step_unit == "attack_step" else self._next_round - 1
        return real_observation(self._sim, theta, m, tau)

    def craft(self, ctx: AttackContext) -> Tensor:
        """Phase 3 (§4.4): the policy's action, crafted as in the simulator, sent by all m."""
        m = ctx.num_malicious
        if self.policy is None or self._sim is None:
            self.log.append({"round": ctx.round, "m": m, "policy_steps": 0, "action": None})
            return ctx.honest_updates.clone()
        action = np.asarray(self.policy.act(self.observation(ctx.theta, m)), dtype=np.float32)
        update, info = craft_real(self._sim, ctx.theta, ctx.round, action)
        self.log.append({"round": ctx.round, "m": m, "policy_steps": self.trained,
                         "action": action.tolist(), **info})
        return repeat_rows(update.to(ctx.honest_updates), m)

    def __call__(self, ctx: AttackContext) -> Tensor:
        """All three phases for one round; honest uploads before ``attack_start``."""
        honest = ctx.honest_updates
        if honest.dim() != 2 or honest.shape[0] < 1:
            raise ValueError(f"need (m ≥ 1, d) honest updates, got {tuple(honest.shape)}")
        if not bool(torch.isfinite(honest).all()):
            raise ValueError("rl: the attackers' honest updates contain NaN/Inf")
        self.observe(ctx)
        alpha = stealth_at(self.stealth, ctx.round)
        if ctx.round < self.attack_start or (alpha == 0.0 and self.stealth_base == "honest"):
            return honest.clone()
        out = stealth_mix(honest, self.craft(ctx).to(honest.dtype), alpha, self.stealth_base)
        return check_finite_output(out, self.name)

