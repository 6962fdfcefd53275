"""Poisoning attacks, built by name: ``fedlib.attacks.get(name, **params)``.

Every attack is a callable ``attack(ctx: AttackContext) -> Tensor[m, d]`` returning the
malicious clients' *deltas* (Δ = θ_ref − θ_malicious), with attributes ``name``,
``knowledge`` ("full": reads the benign updates of the round and/or calls the aggregator;
"partial": only the global model, the attackers' honest updates and their own data) and
``targets`` (targeted attacks: (x, y_true, y_poison) after ``prepare(task)``). Every attack
takes Romoa's stealth factor ``stealth`` α ∈ [0, 1] (float, per-round list or callable) and
``stealth_base`` (see :mod:`fedlib.attacks.base`). Colluding attackers: all m malicious
uploads of a round are crafted together (most attacks send one shared update). Every attack
works for any 1 ≤ m ≤ w − 1 of w sampled uploads, a single benign row included; each
attack's docstring names its fallback there (e.g. Fang's partial attack with one attacker:
σ = 0, it sends μ).

**NaN/Inf policy** (every attack, the same as the rules'): benign rows holding NaN/±Inf are
dropped before the attack reads them, with one ``RuntimeWarning`` ("excluded k of n benign
updates"); non-finite rows of the attackers' own ``honest_updates`` are ignored likewise
(warning; all m uploads are still crafted); an attack never emits a non-finite row —
``ValueError`` instead (α = 0 returns the honest rows untouched)
(:func:`fedlib.attacks.base.drop_nonfinite_benign`,
:func:`fedlib.attacks.base.check_finite_output`).

| name | paper | knowledge | key params |
| --- | --- | --- | --- |
| ``upa`` | Romoa UPA = Fang et al. '20 | full (or partial) | variant, b, space update/model |
| ``lmp_krum`` | Fang et al. '20 §4.1 | full (or partial) | threshold 1e-5, f |
| ``lmp_trimmed_mean`` | Fang et al. '20 §4.2 | full (or partial) | b = 2, space update/model |
| ``tpa`` | Romoa TPA = Bhagoji et al. '19 | partial | source 6, poison 3, boost n/m |
| ``eb`` | L2A baseline (Bhagoji adapted) | partial | steps 5, boost K/M (federation) |
| ``ipm`` | Xie et al. '19 | full | epsilon 5 |
| ``alie`` | Baruch et al. '19 | full (or partial) | z (None = z_max) |
| ``sign_flip`` | sign flipping | partial | scale 1 |
| ``gaussian`` | Gaussian noise | none | std √200, center zero/honest |
| ``label_flip`` | label flipping (data poisoning) | partial | mapping reverse/dict |
| ``min_max`` / ``min_sum`` | Shejwalkar & Houmansadr '21 | full | deviation, gamma_init 10 |
| ``fltrust_adaptive`` | Cao et al. '21 adaptive | full + g_0 | server_update, V 20, σ 0.1, init |
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from .adaptive import RuleSearch
from .base import Attack, reference_updates, stealth_at, stealth_mix
from .boosting import TPA, ExplicitBoosting, targeted_sgd
from .fang import (UPA, LMPKrum, LMPTrimmedMean, change_direction, deviation_partial,
                   directed_deviation, krum_lambda_bound, krum_select, krum_update_scores,
                   lmp_krum)
from .fltrust_adaptive import FLTrustAdaptive, fltrust_aggregate
from .minmax import MinMax, MinSum, gamma_search, perturbation
from .simple import ALIE, IPM, GaussianNoise, LabelFlip, SignFlip, alie_z

REGISTRY: dict[str, type[Attack]] = {
    "upa": UPA,
    "lmp_krum": LMPKrum,
    "lmp_trimmed_mean": LMPTrimmedMean,
    "tpa": TPA,
    "eb": ExplicitBoosting,
    "ipm": IPM,
    "alie": ALIE,
    "sign_flip": SignFlip,
    "gaussian": GaussianNoise,
    "label_flip": LabelFlip,
    "min_max": MinMax,
    "min_sum": MinSum,
    "fltrust_adaptive": FLTrustAdaptive,
    "rule_search": RuleSearch,
}


PLUGINS: dict[str, str] = {"rl": "fedlib.rl.online:OnlineRL"}
"""Attacks that live in other packages, as ``"module:class"``, imported on first use. L2A's RL
attack runs its own simulated federation (:mod:`fedlib.rl`), which builds on the round loop that
in turn builds these attacks: naming it by path keeps ``fedlib.attacks`` free of that cycle."""


def available() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted({*REGISTRY, *PLUGINS})


def _plugin(key: str) -> type:
    """The class a :data:`PLUGINS` entry names."""
    module, _, cls = PLUGINS[key].partition(":")
    return getattr(importlib.import_module(module), cls)


_RENAMED_PARAMS: dict[str, dict[str, str]] = {"min_max": {"tau": "tolerance"},
                                              "min_sum": {"tau": "tolerance"}}
"""Former parameter names that now fail loudly (τ is Romoa's syncing period elsewhere)."""


def get(name: str, **params: Any) -> Attack:
    """A new attack object ``name`` with keyword ``params`` (ValueError on unknown names/params)."""
    key = str(name).lower().replace("-", "_")
    if key in PLUGINS and key not in REGISTRY:
        REGISTRY[key] = _plugin(key)
    if key not in REGISTRY:
        raise ValueError(f"unknown attack {name!r}; available: {available()}")
    renamed = {old: new for old, new in _RENAMED_PARAMS.get(key, {}).items() if old in params}
    if renamed:
        raise ValueError(f"attack {key!r}: parameter(s) renamed, use "
                         + ", ".join(f"{new!r} instead of {old!r}" for old, new in renamed.items()))
    cls = REGISTRY[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"attack {key!r} got unknown parameters {unknown}; accepted: {accepted}")
    return cls(**params)


__all__ = [
    "get", "available", "REGISTRY", "Attack", "UPA", "LMPKrum", "LMPTrimmedMean", "TPA",
    "ExplicitBoosting", "IPM", "ALIE", "SignFlip", "GaussianNoise", "LabelFlip", "MinMax",
    "MinSum", "FLTrustAdaptive", "stealth_mix", "stealth_at", "reference_updates",
    "change_direction", "krum_update_scores", "krum_select", "krum_lambda_bound", "lmp_krum",
    "directed_deviation", "deviation_partial", "targeted_sgd", "alie_z", "gamma_search",
    "perturbation", "fltrust_aggregate",
]
