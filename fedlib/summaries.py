"""Summaries of run histories shared by the notebooks: seed means, tails, the adversary's weight.

A *history* is :attr:`fedlib.runs.Result.history` (a dict of per-evaluation lists). A *curve* is
one of its lists, or what a function of the history returns (e.g.
``lambda h: romoa_settings.error_curve(h, "upa")``). Every notebook reduces its runs with these
functions, so that "the final number of a curve" means the same thing in every figure and table:
the mean of its last ``last`` evaluations (Romoa §5 reports the error rate of the trained model;
our smoke curves are noisy round to round), averaged over the seeds.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["SMOKE_NOTE", "Curve", "curve_of", "tail_mean", "tail_fraction_mean", "seed_curve",
           "seed_tail_mean", "adversary_weight", "mean_adversary_weight", "ours_beside_paper"]

SMOKE_NOTE = "smoke scale, not comparable"
"""How our smoke-profile numbers are labelled beside a paper's printed ones."""

Curve = Union[str, Callable[[Mapping[str, Any]], Sequence[float]]]
"""A history key (``"test_accuracy"``) or a function of the history returning a curve."""


def _history(run: Any) -> Mapping[str, Any]:
    h = getattr(run, "history", run)
    if not isinstance(h, Mapping):
        raise ValueError("expected a fedlib.runs.Result or its history dict, got "
                         f"{type(run).__name__}")
    return h


def curve_of(run: Any, curve: Curve) -> Sequence[float]:
    """The curve ``curve`` (a history key or a function of the history) of one run or history."""
    h = _history(run)
    if callable(curve):
        return curve(h)
    if curve not in h:
        raise ValueError(f"this history has no {curve!r}; it has {sorted(h)}")
    return h[curve]


def _check_last(last: int) -> None:
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise ValueError(f"last must be a positive integer, got {last!r}")


def _check_runs(runs: Sequence[Any]) -> None:
    if len(runs) == 0:
        raise ValueError("need at least one run (one per seed)")


def tail_mean(values: Sequence[float], last: int) -> float:
    """The final number of a curve: the mean of its last ``last`` values."""
    _check_last(last)
    if len(values) == 0:
        raise ValueError("cannot take the tail of an empty curve")
    return float(np.mean(values[-last:]))


def tail_fraction_mean(values: Sequence[Optional[float]], fraction: float = 1 / 3) -> float:
    """Mean of the last ``fraction`` of a curve's recorded values (at least one; None skipped)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
    v = [x for x in values if x is not None]
    if not v:
        raise ValueError("cannot take the tail of a curve with no recorded value")
    k = max(1, math.ceil(len(v) * fraction))
    return float(np.mean(v[-k:]))


def seed_curve(runs: Sequence[Any], curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated rounds of the first run, the curve averaged over the runs, one per seed)."""
    _check_runs(runs)
    rounds = np.asarray(_history(runs[0])["round"])
    return rounds, np.mean([curve_of(r, curve) for r in runs], axis=0)


def seed_tail_mean(runs: Sequence[Any], curve: Curve, last: int) -> float:
    """Mean over the runs (one per seed) of each curve's :func:`tail_mean` of ``last`` values."""
    _check_runs(runs)
    _check_last(last)
    return float(np.mean([np.mean(curve_of(r, curve)[-last:]) for r in runs]))


def adversary_weight(run: Any, window: int = 3, participant: int = 0) -> np.ndarray:
    """The aggregator's weight on ``participant`` at each recorded aggregation, running mean over
    ``window`` aggregations (the adversaries are participants 0..m−1; Romoa Eq. 11's factors)."""
    import pandas as pd

    _check_last(window)
    h = _history(run)
    if "weights" not in h:
        raise ValueError("this run recorded no aggregation weights (record_weights was off)")
    return pd.Series([row[participant] for row in h["weights"]]).rolling(
        window, min_periods=1).mean().to_numpy()


def mean_adversary_weight(runs: Sequence[Any], participant: int = 0) -> float:
    """Mean over the runs (one per seed) of ``participant``'s mean weight over all aggregations."""
    _check_runs(runs)
    out = []
    for r in runs:
        h = _history(r)
        if not h.get("weights"):
            raise ValueError("this run recorded no aggregation weights (record_weights was off)")
        out.append(np.mean([w[participant] for w in h["weights"]]))
    return float(np.mean(out))


def ours_beside_paper(ours: float, paper: float, digits: int = 3) -> str:
    """One table cell "ours / paper" (an em dash for a number that is missing, NaN)."""
    def text(v: float) -> str:
        return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"
    return f"{text(ours)} / {text(paper)}"
