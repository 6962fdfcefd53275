"""Aggregation rules (defenses): pure functions ``rule(updates (n, d), ...) -> (d,)`` and
engine objects from :func:`get`. Every rule also takes a batch of independent problems,
``rule(updates (..., n, d)) -> (..., d)`` (weights (..., n)), equal to separate calls.

=========================  ======================================================
``mean``                   FedAvg (McMahan et al. 2017)
``weighted_mean``          FedAvg weighted by ``client_weights`` (per client id, e.g. n_k)
``krum``, ``multi_krum``   Blanchard et al. 2017
``median``                 coordinate-wise median (Yin et al. 2018), mean of the middle two
``trimmed_mean``           coordinate-wise trimmed mean (Yin et al. 2018)
``clipped_median``         L2A's clipping median: norm clipping, then median
``geometric_median``       RFA, smoothed Weiszfeld (Pillutla et al. 2022); alias ``rfa``
``fltrust``                Cao et al. 2021, needs the server update Δ₀
``bulyan``                 El Mhamdi et al. 2018, over Krum
``centered_clipping``      Karimireddy et al. 2021, stateful (server momentum); radius τ
                           defaults to the median upload norm (``radius="median_norm"``)
``romoa``                  :class:`fedlib.romoa.Romoa`, imported lazily
=========================  ======================================================

NaN/Inf policy (every rule): rows with any non-finite entry are excluded with a
``RuntimeWarning`` and get weight 0; if too few rows remain for the rule (Krum: n > 2f + 2
with f unchanged; Bulyan: n ≥ 4f + 3; trimmed mean: n > 2f; others: n ≥ 1) a ValueError
is raised, as it is for wrong shapes, empty input, non-float dtypes, impossible parameters,
and for a finite input whose aggregate overflows.

``agg.weights`` after a call: for rules that output a linear combination Σᵢ wᵢΔᵢ (mean,
Krum one-hot, multi-Krum 1/m, geometric median, FLTrust, centered clipping) the
coefficients wᵢ; for coordinate-wise rules (median, trimmed mean, clipped median, Bulyan)
each client's share of the values averaged into the output, over all coordinates (sums to 1).

Norms are computed underflow- and overflow-safe (``_checks.row_norms``): a zero upload has
FLTrust trust and weight 0, and a 1e-30 float32 row keeps its true norm.
"""

from .averaging import fltrust, mean, weighted_mean
from .coordinate import clipped_median, median, trimmed_mean
from .distances import pairwise_sq_distances
from .iterative import centered_clipping, geometric_median
from .registry import Aggregator, available, get
from .selection import bulyan, krum, multi_krum

__all__ = [
    "Aggregator", "available", "bulyan", "centered_clipping", "clipped_median", "fltrust",
    "geometric_median", "get", "krum", "mean", "median", "multi_krum",
    "pairwise_sq_distances", "trimmed_mean", "weighted_mean",
]
