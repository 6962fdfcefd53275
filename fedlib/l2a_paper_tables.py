"""L2A's printed numbers as data (L2A Tables 1–3, Figs. 9–10), read by the notebooks that compare.

Accuracies are fractions (the paper prints percentages), times are seconds on the paper's
NVIDIA P100. "rl2" / "rl28" in :data:`FIGS9_10` are the RL attack with the 2-d and the 28-d
action (L2A App. E.2).
"""

from __future__ import annotations

import math

__all__ = ["TABLE1_SECONDS", "TABLE1_STAGES", "TABLE2_SECONDS", "TABLE3_ATTACKERS", "TABLE3",
           "FIGS9_10", "table3_value"]

TABLE1_STAGES: tuple[str, ...] = ("distribution learning", "policy learning", "total FL training")
"""Table 1's columns: the stages of the RL attack (MNIST CNN)."""

TABLE1_SECONDS: list[float] = [2 * 3600, 8 * 3600, 20 * 3600]
"""Table 1: time of each stage of :data:`TABLE1_STAGES` (2 h, 8 h, 20 h)."""

TABLE2_SECONDS: dict[str, dict[str, float]] = {
    "ipm": {"mnist": 0.25, "cifar10": 2.5}, "lmp": {"mnist": 7.7, "cifar10": 30.0},
    "eb": {"mnist": 0.5, "cifar10": 5.5}, "rl": {"mnist": 5.8, "cifar10": 6.0}}
"""Table 2: one attack's execution time per FL round against clipping median, attack → dataset."""

TABLE3_ATTACKERS: list[int] = [5, 10, 20]
"""Table 3's columns: attackers out of K = 100 (5 / 10 / 20 %)."""

TABLE3: dict[str, list[float]] = {
    "none": [0.9970, 0.9902, 0.9986], "ipm": [0.9966, 0.8888, 0.6896],
    "eb": [0.9968, 0.8426, 0.7006], "lmp": [0.9968, 0.8938, 0.6904],
    "rl": [0.6890, 0.6890, 0.6890]}
"""Table 3: test accuracy on the synthetic set under Krum, attack → one value per column."""

FIGS9_10: dict[str, dict[str, float]] = {
    "clipped_median": {"none": 1.0, "ipm": 0.9670, "lmp": 0.8904, "rl2": 0.8804, "rl28": 0.6890},
    "fltrust": {"none": 1.0, "ipm": 1.0, "lmp": 1.0, "rl2": 1.0, "rl28": 0.6890}}
"""Figs. 9 (clipping median) and 10 (FLTrust): the final model's accuracy printed in each panel."""


def table3_value(attack: str, attackers: int) -> float:
    """L2A Table 3's accuracy of ``attack`` with ``attackers`` of 100 (NaN where it has none)."""
    if attack not in TABLE3:
        raise ValueError(f"Table 3 has no attack {attack!r}; it has {sorted(TABLE3)}")
    if attackers not in TABLE3_ATTACKERS:
        return math.nan
    return TABLE3[attack][TABLE3_ATTACKERS.index(attackers)]
