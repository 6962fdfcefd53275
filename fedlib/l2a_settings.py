"""L2A's evaluation settings (L2A §5, App. E.1–E.2) shared by its notebooks: names, labels, rules.

**Attacks** as the figures name them: NA (no attack), EB (explicit boosting), IPM (inner product
manipulation), LMP (Fang et al.'s local model poisoning, *tailored to the rule*: the Krum attack
against Krum, FLTrust's adaptive attack against FLTrust, the trimmed-mean attack against every
other rule) and RL (the model-based RL attack, ``"rl"``; a figure's variants of it are named
``rl_<variant>`` and all run fedlib's ``"rl"`` attack). **Rules**: Krum with f (not printed in
L2A; the largest valid with w = 10 uploads is 3) and clipping median with its threshold (App. E.1).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ATTACK_LABELS", "ATTACK_STYLES", "ATTACK_COLORS", "RULE_LABELS", "lmp_variant",
           "attack_name", "rule_params"]

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
