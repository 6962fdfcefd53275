"""Romoa against the learned attack: does time-coupled aggregation resist a non-myopic attacker?

L2A (§2) names *time-coupled* aggregation as the case its learned attack was not tried on; Romoa
is time-coupled (its sanitizing factors carry a momentum over lookahead iterations, Eqs. 8–11)
and argues its security by a game (§4: in G* the unique equilibrium is "no poison"). This module
runs both papers against each other in one setting:

* **One protocol for every defense**: Romoa's lookahead protocol (Algorithms 1–2; n participants
  upload every iteration, the server aggregates every τ, participants move to θ̄ at the moving
  rate γ), participants 0..M−1 the adversaries, as in :mod:`fedlib.romoa_settings`. Defenses
  (:data:`DEFENSES`): the mean, Romoa in both readings, RFA and Krum
  (:func:`fedlib.romoa_settings.defense_config`).
* **Attacks** (:data:`ATTACKS`): none, UPA (Eq. 2), TPA (Eq. 3), the adaptive γ-search
  (:func:`fedlib.romoa_settings.attack_config`) and ``"rl"``: an L2A policy (§4.1 MDP, TD3)
  trained in the attackers' simulator of *that* defense under the same protocol
  (:class:`fedlib.rl.EnvConfig` with ``protocol="romoa"``; its state holds the attackers' weight
  in the server's last aggregation — the threat model assumes the server tells each participant
  its weight), with P̃ = the attackers' own data (L2A "RL without distribution learning") and θ₀ =
  the real federation's initial model, then executed in the real run
  (:class:`fedlib.rl.PolicyAttack`).
* **What each iteration records** (:func:`run_cell`): the adversaries' total weight (Romoa: their
  sanitizing factors' share, Eq. 11; other rules: their weight in the last aggregation), the
  weight the attackers had seen when they crafted (``weight_seen``), the **poison level**
  ‖Δ̄_mal − Δ̄_benign‖ / ‖Δ̄_benign‖ (the crafted upload's distance from the benign mean, relative
  to the benign mean's length: 0 for an honest upload; Romoa §4.1's dosage |aᵢ|/d grows with it)
  and, for the policy, its **action norm** ‖a‖₂/√k ∈ [0, 1].

A run the attack drives to NaN/Inf is ``status="diverged"`` (no final accuracy; the summaries
count it as ``diverged_accuracy``, default 0: the attack destroyed the model).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .diverged_runs import is_divergence
from .engine import seed_for
from .romoa_settings import DEFENSES, attack_config, defense_config, moving_rate

__all__ = ["DEFENSES", "ATTACKS", "MEMORYLESS", "ROMOA", "StudySetting", "run_config",
           "env_config", "train_attack", "poison_level", "run_cell", "run_study",
           "accuracy_table", "accuracy_drop", "poison_response"]

ATTACKS: tuple[str, ...] = ("none", "upa", "tpa", "adaptive", "rl")
"""No attack, Romoa's UPA and TPA, the adaptive γ-search and the learned policy (L2A §4)."""
MEMORYLESS: tuple[str, ...] = ("baseline", "rfa", "krum")
"""The rules without state across aggregations (the mean, RFA, Krum)."""
ROMOA: tuple[str, ...] = ("romoa-literal", "romoa-calibrated")
"""The time-coupled rule in its two readings (:class:`fedlib.romoa.Romoa` presets)."""
_HOLDOUT_MAX = 500


@dataclasses.dataclass(frozen=True)
class StudySetting:
    """The lookahead federation of every cell and the policy's training budget (see fields)."""

    dataset: str = "synthetic"
    model: str = "synthetic-mlp"
    width: float = 1.0
    n: int = 10
    """Participants (all upload every iteration, Romoa Alg. 2)."""
    adversaries: int = 2
    """M: participants 0..M−1 attack (Krum's f = M, capped)."""
    tau: int = 4
    """τ: iterations between aggregations."""
    moving_rate: Any = "1/n"
    """γ of Alg. 2 line 11 (:func:`fedlib.romoa_settings.moving_rate`)."""
    iterations: int = 40
    """T: lookahead iterations of a real run, and the policy's episode length H."""
    lr: float = 0.5
    batch_size: int = 32
    eval_every: int = 10
    """Evaluate the global model every this many iterations (and at the end)."""
    eval_size: Optional[int] = None
    """Test points per evaluation (None: the whole test set)."""
    train_size: Optional[int] = None
    upa_space: str = "update"
    tpa_labels: tuple[int, int] = (1, 0)
    """TPA's (true, poison) labels (the synthetic set: outside → inside the circle)."""
    action: str = "full"
    """The policy's action (:attr:`fedlib.rl.EnvConfig.action`): ``"full"`` (the crafted update,
    small models) or ``"gamma_E"`` (L2A's 2-d action, any model)."""
    policy_steps: int = 200
    """TD3 env steps per policy (L2A App. E.1: 8,000 for the synthetic MLP)."""
    policy_lr: float = 1e-3
    policy_envs: Optional[int] = None
    """Simulator replicas during training (None: :func:`fedlib.rl.train.default_num_envs`)."""

    def __post_init__(self) -> None:
        for name in ("n", "adversaries", "tau", "iterations", "batch_size", "eval_every",
                     "policy_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
        if not 2 * self.adversaries < self.n:
            raise ValueError(f"need fewer than n/2 adversaries (Romoa Thm. 1), got "
                             f"{self.adversaries} of n = {self.n}")
        if self.policy_steps % 5:
            raise ValueError(f"policy_steps must be a multiple of TD3's train_freq 5, "
                             f"got {self.policy_steps}")
        if self.action not in ("full", "gamma_E"):
            raise ValueError(f"action must be 'full' or 'gamma_E', got {self.action!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        moving_rate(self.n, self.moving_rate)          # ValueError for a bad γ
        attack_config("upa", upa_space=self.upa_space)

    @property
    def gamma(self) -> float:
        """The moving rate γ as a number."""
        return moving_rate(self.n, self.moving_rate)


def _attack_part(setting: StudySetting, attack: str) -> dict[str, Any]:
    M = setting.adversaries
    if attack == "rl":              # the policy is the step's hook; the configured attack is none
        return {"attack": "none", "attack_params": {}, "num_attackers": M}
    if attack == "tpa":
        source, poison = setting.tpa_labels
        return {"attack": "tpa", "num_attackers": M,
                "attack_params": {"source": source, "poison": poison,
                                  "moving_rate": setting.gamma}}
    return attack_config(attack, setting.dataset, M, upa_space=setting.upa_space)


def run_config(setting: StudySetting, defense: str, attack: str, seed: int) -> dict[str, Any]:
    """The validated run config of one cell: Romoa's protocol (Alg. 2), the defense, the attack."""
    from .runs import RunConfig

    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose from {ATTACKS}")
    s = setting
    cfg = dict(dataset=s.dataset, model=s.model, width=s.width, protocol="romoa",
               num_clients=s.n, tau=s.tau, moving_rate=s.gamma, lr=s.lr,
               batch_size=s.batch_size, train_size=s.train_size, partition="iid", seed=seed,
               device="cpu", **defense_config(defense, s.n, s.adversaries),
               **_attack_part(s, attack))
    return RunConfig.from_dict(cfg).to_dict()


def env_config(setting: StudySetting, defense: str, seed: int, theta0: Tensor,
               attacker_data: tuple[Tensor, Tensor], num_classes: int) -> Any:
    """The attackers' simulator of ``defense`` (L2A §4.3) under Romoa's protocol: P̃ = their own
    data less a held-out part (the reward's f, §4.1), θ₀ = the real initial model, H = T."""
    from .rl import EnvConfig

    x, y = attacker_data
    if len(x) < 2:
        raise ValueError("the attackers need at least two samples (P̃ and a held-out part)")
    g = torch.Generator().manual_seed(seed_for(seed, "study-romoa-rl", "holdout"))
    perm = torch.randperm(len(x), generator=g)
    k = max(1, min(_HOLDOUT_MAX, len(x) // 5))
    hold, own = perm[:k], perm[k:]
    rule = defense_config(defense, setting.n, setting.adversaries)
    return EnvConfig(data=(x[own], y[own]), holdout=(x[hold], y[hold]),
                     theta0=theta0.detach().clone(), model=setting.model, width=setting.width,
                     num_classes=num_classes, aggregator=rule["aggregator"],
                     aggregator_params=rule["aggregator_params"], num_clients=setting.n,
                     clients_per_round=setting.n, num_attackers=setting.adversaries,
                     lr=setting.lr, batch_size=setting.batch_size, protocol="romoa",
                     tau=setting.tau, moving_rate=setting.gamma, horizon=setting.iterations,
                     action=setting.action, seed=seed)


def _federation(setting: StudySetting, defense: str, attack: str, seed: int) -> Any:
    from .federation import Federation
    return Federation.from_config(run_config(setting, defense, attack, seed))


def train_attack(setting: StudySetting, defense: str, seed: int,
                 progress: bool = False) -> tuple[Any, Any]:
    """(policy, its EnvConfig): TD3 (L2A §4.3, App. E.1) in the simulator of ``defense``."""
    from .rl import train_policy

    fed = _federation(setting, defense, "rl", seed)
    env = env_config(setting, defense, seed, fed.theta[0], fed.attacker_data[0],
                     fed.task.num_classes)
    steps = setting.policy_steps
    policy = train_policy(env, algo="td3", steps=steps, seed=seed, lr=setting.policy_lr,
                          checkpoint_every=steps, num_envs=setting.policy_envs,
                          progress=progress)
    return policy, env


def poison_level(uploads: Tensor, malicious: Tensor) -> float:
    """‖Δ̄_mal − Δ̄_benign‖ / ‖Δ̄_benign‖ of one iteration's (n, d) uploads (NaN: no attacker)."""
    if uploads.dim() != 2 or malicious.shape != uploads.shape[:1]:
        raise ValueError(f"need (n, d) uploads and an (n,) mask, got {tuple(uploads.shape)} "
                         f"and {tuple(malicious.shape)}")
    mal = malicious.bool()
    if not bool(mal.any()) or bool(mal.all()):
        return math.nan
    up = uploads.double()
    benign = up[~mal].mean(0)
    scale = float(benign.norm())
    if scale == 0.0:
        return math.nan
    return float((up[mal].mean(0) - benign).norm()) / scale


def _adversary_weight(fed: Any, M: int) -> float:
    """The adversaries' total weight in the rule's last aggregation (Romoa: Eq. 11's factors)."""
    from .rl.sim import attackers_weight
    share = attackers_weight(fed.weights(0), M)
    return math.nan if share is None else share


def run_cell(setting: StudySetting, defense: str, attack: str, seed: int,
             policy: Any = None, env: Any = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """One real lookahead run (Romoa Alg. 2): (summary row, per-iteration trace)."""
    if (attack == "rl") != (policy is not None and env is not None):
        raise ValueError("attack 'rl' needs policy and env (train_attack); other attacks take "
                         "neither")
    from .rl import PolicyAttack
    from .tasks import seeded_subset

    start = time.perf_counter()
    s, M = setting, setting.adversaries
    fed = _federation(s, defense, attack, seed)
    idx = seeded_subset(len(fed.task.y_test), s.eval_size, "eval", s.dataset)
    x, y = fed.task.x_test[idx], fed.task.y_test[idx]
    hook = PolicyAttack(policy, env, seed=seed) if attack == "rl" else None
    rows: list[dict[str, Any]] = []
    status, seen = "ok", math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # overflowing attacks: recorded as diverged
        for t in range(s.iterations):
            try:
                out = fed.step(malicious=hook)
            except (FloatingPointError, ValueError) as err:
                if not is_divergence(err):
                    raise
                status = "diverged"
                break
            weight = _adversary_weight(fed, M)
            row = {"iteration": t, "sync": bool(out.sync), "weight": weight,
                   "weight_seen": seen,
                   "poison_level": poison_level(out.uploads[0], out.is_malicious[0]),
                   "action_norm": math.nan, "accuracy": math.nan}
            if hook is not None and hook.log:
                a = np.asarray(hook.log[-1]["action"], dtype=np.float64)
                row["action_norm"] = float(np.linalg.norm(a) / math.sqrt(a.size))
            if (t + 1) % s.eval_every == 0 or t + 1 == s.iterations:
                row["accuracy"] = float(fed.evaluate(x, y)["accuracy"][0])
            rows.append(row)
            seen = weight
    trace = pd.DataFrame(rows, columns=["iteration", "sync", "weight", "weight_seen",
                                        "poison_level", "action_norm", "accuracy"])
    trace.insert(0, "seed", seed)
    trace.insert(0, "attack", attack)
    trace.insert(0, "defense", defense)
    known = trace["weight"].dropna()
    summary = {"defense": defense, "attack": attack, "seed": seed, "status": status,
               "final_accuracy": float(trace["accuracy"].iloc[-1])
               if status == "ok" else math.nan,
               "iterations_run": len(trace),
               "mean_adversary_weight": float(known.mean()) if len(known) else math.nan,
               "final_adversary_weight": float(known.iloc[-1]) if len(known) else math.nan,
               "mean_poison_level": float(trace["poison_level"].mean()),
               "seconds": time.perf_counter() - start}
    return summary, trace


def _check_simulator(setting: StudySetting, defense: str, seed: int) -> None:
    """Build the attackers' simulator of ``defense`` (L2A §4.3) once, before any run."""
    from .rl.sim import Simulator

    fed = _federation(setting, defense, "rl", seed)
    env = env_config(setting, defense, seed, fed.theta[0], fed.attacker_data[0],
                     fed.task.num_classes)
    try:
        Simulator(env, [seed])
    except ValueError as err:
        raise ValueError(f"the attackers' simulator cannot run {defense!r} under Romoa's "
                         f"protocol: {err}") from err


def run_study(setting: StudySetting, defenses: Sequence[str], attacks: Sequence[str],
              seeds: Sequence[int], rl_defenses: Optional[Sequence[str]] = None,
              progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (defense, attack, seed) cell; ``"rl"`` only for ``rl_defenses`` (default: all).

    Returns (cells: one row per run, with ``policy_seconds`` for the RL rows; trace: one row
    per iteration of every run).
    """
    defenses, attacks, seeds = list(defenses), list(attacks), [int(s) for s in seeds]
    rl_defenses = defenses if rl_defenses is None else list(rl_defenses)
    for d in {*defenses, *rl_defenses}:
        if d not in DEFENSES:
            raise ValueError(f"unknown defense {d!r}; choose from {DEFENSES}")
    bad = [a for a in attacks if a not in ATTACKS]
    if bad or not defenses or not attacks or not seeds:
        raise ValueError(f"need defenses, attacks from {ATTACKS} and seeds; got attacks {attacks}")
    if not set(rl_defenses) <= set(defenses):
        raise ValueError("rl_defenses must be among defenses")
    for d in rl_defenses:
        _check_simulator(setting, d, seeds[0])
    summaries, traces = [], []
    for d in defenses:
        for seed in seeds:
            for a in attacks:
                if a == "rl" and d not in rl_defenses:
                    continue
                extra: dict[str, Any] = {}
                if a == "rl":
                    t0 = time.perf_counter()
                    policy, env = train_attack(setting, d, seed)
                    extra["policy_seconds"] = time.perf_counter() - t0
                    row, trace = run_cell(setting, d, a, seed, policy, env)
                else:
                    row, trace = run_cell(setting, d, a, seed)
                summaries.append({**row, "policy_seconds": math.nan, **extra})
                traces.append(trace)
                if progress:
                    print(f"{d:>16} {a:>8} seed {seed}: accuracy {row['final_accuracy']:.3f} "
                          f"({row['status']}), {row['seconds']:.1f} s", flush=True)
    return pd.DataFrame(summaries), pd.concat(traces, ignore_index=True)


def accuracy_table(cells: pd.DataFrame, diverged_accuracy: float = 0.0) -> pd.DataFrame:
    """Defense × attack: the final accuracy averaged over seeds (a diverged run counts as
    ``diverged_accuracy``)."""
    if not {"defense", "attack", "status", "final_accuracy"} <= set(cells.columns):
        raise ValueError("expected run_study's cells")
    acc = cells["final_accuracy"].where(cells["status"] == "ok", float(diverged_accuracy))
    return cells.assign(accuracy=acc).pivot_table(index="defense", columns="attack",
                                                  values="accuracy", aggfunc="mean", sort=False)


def accuracy_drop(table: pd.DataFrame, attack: str) -> pd.Series:
    """Per defense: accuracy without attack minus accuracy under ``attack`` (larger: hurt more)."""
    for col in ("none", attack):
        if col not in table.columns:
            raise ValueError(f"the table has no {col!r} column; it has {list(table.columns)}")
    return (table["none"] - table[attack]).dropna()


def poison_response(trace: pd.DataFrame, defense: str, attack: str = "rl",
                    level: str = "poison_level") -> dict[str, float]:
    """Romoa §4's G* check: how the attack's poison level at t follows the weight it saw at t.

    Returns ``correlation`` (Pearson, over iterations and seeds with both known), and the mean
    ``level`` when the seen weight is at most (``low``) or above (``high``) its median. An
    equilibrium strategy of G* poisons less when its factor is low: correlation > 0, low < high.
    """
    if level not in ("poison_level", "action_norm"):
        raise ValueError(f"level must be 'poison_level' or 'action_norm', got {level!r}")
    rows = trace[(trace["defense"] == defense) & (trace["attack"] == attack)]
    rows = rows[["weight_seen", level]].dropna()
    out = {"points": float(len(rows)), "correlation": math.nan, "low": math.nan,
           "high": math.nan}
    if len(rows) < 2:
        return out
    w, p = rows["weight_seen"].to_numpy(), rows[level].to_numpy()
    if w.std() > 0 and p.std() > 0:
        out["correlation"] = float(np.corrcoef(w, p)[0, 1])
    cut = float(np.median(w))
    low, high = p[w <= cut], p[w > cut]
    out["low"] = float(low.mean()) if len(low) else math.nan
    out["high"] = float(high.mean()) if len(high) else math.nan
    return out
