"""L2A's evaluation settings (L2A §5, App. E.1–E.2) shared by its notebooks: names, labels, rules.

**Attacks** as the figures name them: NA (no attack), EB (explicit boosting), IPM (inner product
manipulation), LMP (Fang et al.'s local model poisoning, *tailored to the rule*: the Krum attack
against Krum, FLTrust's adaptive attack against FLTrust, the trimmed-mean attack against every
other rule) and RL (the model-based RL attack, ``"rl"``; a figure's variants of it are named
``rl_<variant>`` and all run fedlib's ``"rl"`` attack). **Rules**: Krum with f (not printed in
L2A; the largest valid with w = 10 uploads is 3) and clipping median with its threshold (App. E.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ATTACK_LABELS", "ATTACK_STYLES", "ATTACK_COLORS", "RULE_LABELS", "lmp_variant",
           "attack_name", "rule_params", "CurveSettings"]

ATTACK_LABELS: dict[str, str] = {"none": "NA", "eb": "EB", "ipm": "IPM", "lmp": "LMP", "rl": "RL"}
"""The legend label of each attack, as in L2A's figures."""

ATTACK_STYLES: dict[str, dict[str, Any]] = {
    "none": dict(color="#444444", ls="--"), "eb": dict(color="#ff7f0e"),
    "ipm": dict(color="#2ca02c"), "lmp": dict(color="#9467bd"), "rl": dict(color="#d62728", lw=2.4)}
"""Matplotlib keywords of each attack's curve, the same in every L2A figure."""

ATTACK_COLORS: dict[str, str] = {k: v["color"] for k, v in ATTACK_STYLES.items()}
"""The colour of each attack (bars and markers)."""

RULE_LABELS: dict[str, str] = {"krum": "Krum", "clipped_median": "clipping median",
                               "geometric_median": "geometric median", "fltrust": "FLTrust"}
"""The name L2A gives each defense."""

_LMP = {"krum": "lmp_krum", "fltrust": "fltrust_adaptive"}


def _check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def lmp_variant(rule: str) -> str:
    """Fang et al.'s LMP tailored to ``rule`` (L2A §5): the Krum, FLTrust or trimmed-mean attack."""
    return _LMP.get(_check_name("rule", rule), "lmp_trimmed_mean")


def attack_name(attack: str, rule: str) -> str:
    """fedlib's attack for a figure's attack name: LMP tailored to the rule, ``rl_*`` → ``"rl"``."""
    _check_name("attack", attack)
    if attack == "lmp":
        return lmp_variant(rule)
    return "rl" if attack.startswith("rl") else attack


def rule_params(rule: str, krum_f: int, clip_threshold: float) -> dict[str, Any]:
    """The server rule's parameters (App. E.1): Krum's f, clipping median's threshold, else none."""
    if _check_name("rule", rule) == "krum":
        if isinstance(krum_f, bool) or not isinstance(krum_f, int) or krum_f < 0:
            raise ValueError(f"krum_f must be an integer ≥ 0, got {krum_f!r}")
        return {"f": krum_f}
    if rule == "clipped_median":
        return {"threshold": clip_threshold}
    return {}


@dataclass(frozen=True)
class CurveSettings:
    """One accuracy-curve figure's settings (L2A Figs. 3, 5, 6: Alg. 1 with App. E.1's counts and
    the RL attack's phases and budgets, §4.2–4.4), read from a notebook's parameters by name."""

    dataset: str
    width: float
    num_clients: int
    clients_per_round: int
    num_attackers: int
    lr: float
    batch_size: int
    rounds: int
    krum_f: int
    clip_threshold: float
    eval_every: int
    eval_size: Any
    train_size: Any
    q: float
    samples: int
    learn_rounds: int
    rl_start: int
    refresh_every: int
    refresh_steps: int
    policy_steps: int
    horizon: int
    policy_lr: float
    algo_kwargs: Any
    inversion_batch: int
    inversion_iterations: int
    denoiser_epochs: int
    search_lr: Any
    search_batch: Any
    model: str = "l2a-mnist"

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> "CurveSettings":
        """The settings named in ``values`` (a notebook's ``globals()``); ``model`` optional."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in values and n != "model"]
        if missing:
            raise ValueError(f"CurveSettings: missing parameters {missing}")
        return cls(**{n: values[n] for n in names if n in values})

    def rl_params(self, seed: int) -> dict[str, Any]:
        """The RL attack's ``attack_params`` (its three phases, scaled by the profile)."""
        return dict(distribution="learned", samples=self.samples, learn_rounds=self.learn_rounds,
                    attack_start=self.rl_start, refresh_every=self.refresh_every,
                    refresh_steps=self.refresh_steps, policy_steps=self.policy_steps,
                    horizon=self.horizon, policy_lr=self.policy_lr,
                    algo_kwargs=dict(self.algo_kwargs), model=self.model, width=self.width,
                    inversion=dict(batch_size=self.inversion_batch,
                                   iterations=self.inversion_iterations,
                                   denoiser_epochs=self.denoiser_epochs),
                    env=dict(search_lr=self.search_lr, search_batch=self.search_batch), seed=seed)

    def run_config(self, rule: str, part: str, attack: str, seed: int) -> dict[str, Any]:
        """One curve's run config: ``rule`` under ``attack`` on partition ``part``."""
        cfg = dict(dataset=self.dataset, model=self.model, width=self.width,
                   num_clients=self.num_clients, clients_per_round=self.clients_per_round,
                   num_attackers=self.num_attackers, lr=self.lr, batch_size=self.batch_size,
                   rounds=self.rounds, partition=part, aggregator=rule,
                   aggregator_params=rule_params(rule, self.krum_f, self.clip_threshold),
                   attack=attack_name(attack, rule), eval_every=self.eval_every,
                   eval_size=self.eval_size, train_size=self.train_size, seed=seed)
        if part == "q-noniid":
            cfg["q"] = self.q
        if attack == "none":
            cfg["num_attackers"] = 0
        if attack == "rl":
            cfg["attack_params"] = self.rl_params(seed)
        return cfg
