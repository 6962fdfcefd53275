"""Romoa's printed tables as data (Romoa §5, Tables 1 and 2), read by every notebook that compares.

The numbers are copied as printed (six decimals). Error rate (§2.2): UPA — one minus the test
accuracy; TPA — the poison-label confidence of the target samples; no attack — one minus the
test accuracy. The paper has a single Romoa row: both presets of ``fedlib.romoa.Romoa``
(``romoa-literal``, ``romoa-calibrated``) are compared with it. The adaptive γ-search is ours:
the paper has no such row (:func:`table1_value` returns NaN for it).
"""

from __future__ import annotations

import math

from .romoa_settings import canonical_defense

__all__ = ["TABLE1_COLUMNS", "TABLE1", "TABLE2", "paper_row", "table1_value", "table2_value"]

TABLE1_COLUMNS: list[tuple[int, int]] = [(10, 1), (10, 3), (10, 4), (20, 1), (20, 6), (20, 9),
                                         (100, 1), (100, 33), (100, 49), (200, 1), (200, 66),
                                         (200, 99)]
"""Table 1's columns as (participants n, adversaries), in the printed order."""

TABLE1: dict[str, dict[str, dict[str, list[float]]]] = {
    "mnist": {
        "tpa": {"baseline": [0.969517, 0.944382, 0.985758, 0.973807, 0.963074, 0.990942,
                             0.995910, 0.995476, 0.995090, 0.995910, 0.995476, 0.995090],
                "romoa":    [0.008289, 0.000183, 0.000571, 0.021465, 0.013944, 0.001301,
                             0.051435, 0.136652, 0.152566, 0.108603, 0.189824, 0.211517],
                "rfa":      [0.004690, 0.564633, 0.687104, 0.009044, 0.61265, 0.61265,
                             0.034294, 0.532786, 0.988208, 0.091589, 0.682731, 0.995961],
                "krum":     [0.046238, 0.062209, 0.360937, 0.058969, 0.094315, 0.461042,
                             0.106764, 0.102102, 0.999547, 0.131459, 0.767544, 0.987186]},
        "upa": {"baseline": [0.884297, 0.886125, 0.886371, 0.881747, 0.886246, 0.886527,
                             0.867507, 0.886444, 0.886500, 0.873398, 0.886481, 0.886500],
                "romoa":    [0.014700, 0.043952, 0.042849, 0.087651, 0.068632, 0.108119,
                             0.122615, 0.189103, 0.225616, 0.188722, 0.291795, 0.292397],
                "rfa":      [0.033200, 0.105942, 0.884133, 0.048608, 0.143554, 0.886077,
                             0.138354, 0.885578, 0.887790, 0.195785, 0.682731, 0.995961],
                "krum":     [0.111384, 0.171478, 0.898100, 0.137760, 0.160500, 0.899100,
                             0.296960, 0.884200, 0.931200, 0.853001, 0.875300, 0.870700]}},
    "cifar10": {
        "tpa": {"baseline": [0.976524, 0.993349, 0.969406, 0.942245, 0.993748, 0.988471,
                             0.995910, 0.995476, 0.995090, 0.995910, 0.995476, 0.995090],
                "romoa":    [0.106586, 0.116066, 0.128794, 0.105491, 0.110650, 0.19591,
                             0.107185, 0.117845, 0.126996, 0.117252, 0.112823, 0.211517],
                "rfa":      [0.101637, 0.36399, 0.713695, 0.009044, 0.171790, 0.738469,
                             0.102496, 0.194651, 0.914630, 0.100821, 0.234961, 0.941820],
                "krum":     [0.100348, 0.103137, 0.100276, 0.099465, 0.099167, 0.100321,
                             0.101537, 0.102102, 0.999547, 0.100606, 0.908100, 0.902900]},
        "upa": {"baseline": [0.899990, 0.900000, 0.900000, 0.900000, 0.900000, 0.900000,
                             0.899408, 0.900000, 0.900000, 0.898762, 0.900000, 0.900000],
                "romoa":    [0.390807, 0.473752, 0.483586, 0.497820, 0.589919, 0.675593,
                             0.740108, 0.834114, 0.834114, 0.875135, 0.884951, 0.888772],
                "rfa":      [0.411122, 0.899662, 0.899919, 0.527069, 0.899814, 0.900000,
                             0.743340, 0.899804, 0.900000, 0.860587, 0.899931, 0.900000],
                "krum":     [0.631414, 0.915900, 0.899800, 0.706112, 0.881600, 0.899300,
                             0.900200, 0.898500, 0.908600, 0.905888, 0.911900, 0.913200]}},
}
"""Romoa Table 1 ("Average error rate for FL tasks on different scales"): dataset → attack →
row → one value per column of :data:`TABLE1_COLUMNS`."""

TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "mnist": {"baseline": {"none": 0.149003, "tpa": 0.880771, "upa": 0.895005},
              "romoa": {"none": 0.133656, "tpa": 0.432999, "upa": 0.16347}},
    "cifar10": {"baseline": {"none": 0.460900, "tpa": 0.972004, "upa": 0.900100},
                "romoa": {"none": 0.424200, "tpa": 0.738158, "upa": 0.570603}},
}
"""Romoa Table 2 ("Error rate of UPA and TPA with non-i.i.d. datasets"): dataset → row →
condition ("none", "tpa", "upa")."""


def paper_row(defense: str) -> str:
    """The paper's row of a defense: both Romoa presets map to the single printed Romoa row."""
    key = canonical_defense(defense)
    return "romoa" if key.startswith("romoa-") else key


def table1_value(dataset: str, attack: str, defense: str, n: int = 10,
                 adversaries: int = 1) -> float:
    """Romoa Table 1's error rate of one cell (NaN for a dataset or attack it has no row of)."""
    row = paper_row(defense)
    if (n, adversaries) not in TABLE1_COLUMNS:
        raise ValueError(f"Table 1 has no column (n, adversaries) = {(n, adversaries)}; "
                         f"it has {TABLE1_COLUMNS}")
    by_attack = TABLE1.get(dataset, {}).get(str(attack).lower())
    if by_attack is None or row not in by_attack:
        return math.nan
    return by_attack[row][TABLE1_COLUMNS.index((n, adversaries))]


def table2_value(dataset: str, defense: str, condition: str) -> float:
    """Romoa Table 2's error rate of one cell (NaN where the paper prints none, e.g. RFA)."""
    return TABLE2.get(dataset, {}).get(paper_row(defense), {}).get(str(condition).lower(),
                                                                    math.nan)
