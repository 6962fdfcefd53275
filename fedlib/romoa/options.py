"""Romoa's named options and the two presets of them (``fedlib.romoa`` explains each choice).

Every ambiguity of §3 is one named option; ``"literal"`` and ``"calibrated"`` are presets of
those options, nothing more. :func:`resolve_options` validates a choice before any work.
"""

from __future__ import annotations

from typing import Optional, Union

from . import factors as fac
from . import meanshift as ms

READINGS = {
    "literal": dict(selection="parameter", elementwise="sign", pearson="printed",
                    generating="signed"),
    "calibrated": dict(selection="path", elementwise="cosine", pearson="centered",
                       generating="cluster_penalty"),
}
"""The two presets of the Eq. 4 / Eq. 5 / Eq. 7 / Eqs. 8–10 options."""

READING_BANDWIDTH = {"literal": "auto", "calibrated": "robust"}
"""Each preset's mean-shift bandwidth rule (§3.3 gives none)."""

CHOICES = dict(selection=("parameter", "path"), elementwise=("sign", "cosine"),
               pearson=("printed", "centered"), generating=fac.GENERATING,
               centroid=("majority", "own"), kernel=ms.KERNELS, layers=("module", "tensor"))
"""The admissible values of every named option."""


def resolve_options(reading: str, *, selection: Optional[str] = None,
                    elementwise: Optional[str] = None, pearson: Optional[str] = None,
                    generating: Optional[str] = None, centroid: str = "majority",
                    kernel: str = "flat", layers: str = "module") -> dict[str, str]:
    """The preset ``reading`` (Eqs. 4–10 as printed, or calibrated) with explicit overrides."""
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {tuple(READINGS)}, got {reading!r}")
    opts = dict(READINGS[reading])
    for key, val in dict(selection=selection, elementwise=elementwise, pearson=pearson,
                         generating=generating).items():
        if val is not None:
            opts[key] = val
    opts.update(centroid=centroid, kernel=kernel, layers=layers)
    for key, val in opts.items():
        if val not in CHOICES[key]:
            raise ValueError(f"{key} must be one of {CHOICES[key]}, got {val!r}")
    return opts


def check_numbers(selection_ratio: Optional[float], beta: float, tolerance: float,
                  report_samples: int) -> None:
    """ValueError unless γ (Eq. 4) ∈ (0, 1] or None, β (Eq. 11) ∈ (0, 1], κ ≥ 0, samples ≥ 0."""
    if selection_ratio is not None and not (isinstance(selection_ratio, (int, float))
                                            and 0 < selection_ratio <= 1):
        raise ValueError(f"selection_ratio must be in (0, 1] or None, got {selection_ratio!r}")
    if not isinstance(beta, (int, float)) or not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")
    if not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be ≥ 0, got {tolerance!r}")
    if not isinstance(report_samples, int) or report_samples < 0:
        raise ValueError(f"report_samples must be an integer ≥ 0, got {report_samples!r}")


def resolve_bandwidth(reading: str, bandwidth: Optional[ms.Bandwidth]) -> Union[str, float]:
    """The mean-shift bandwidth: the preset's rule when None, else a checked rule or number."""
    if bandwidth is None:
        return READING_BANDWIDTH[reading]
    if isinstance(bandwidth, str):
        if bandwidth not in ms.BANDWIDTH_RULES:
            raise ValueError(f"bandwidth must be one of {ms.BANDWIDTH_RULES} or a positive "
                             f"number, got {bandwidth!r}")
    elif isinstance(bandwidth, bool) or not (isinstance(bandwidth, (int, float))
                                             and bandwidth > 0):
        raise ValueError(f"bandwidth must be one of {ms.BANDWIDTH_RULES} or a positive number, "
                         f"got {bandwidth!r}")
    return bandwidth
