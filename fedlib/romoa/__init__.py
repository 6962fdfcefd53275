"""Romoa: robust model aggregation by lookahead similarity and sanitizing factors.

Mao, Yuan, Zhao, Zhong (ESORICS 2021), §3 and Algorithms 1–2. No public implementation
exists; this one follows the paper equation by equation and resolves each ambiguity
explicitly, as a named option; two presets of those options are provided: ``"literal"``
(the equations as printed) and ``"calibrated"`` (four measurement calibrations plus an
unprinted generating function, the cluster penalty).

Pipeline, once per iteration t' (lookahead or sync), on the n participants' paths
aᵢ = θᵢ_t' − θ̄_t since the last sync and the lookahead aggregate ā = mean(aᵢ) (Fig. 3):

1. Eq. 4 — :func:`fedlib.romoa.similarity.parameter_selection`: every participant's
   top-``selection_ratio`` parameters by magnitude; U = their union (one index set for all).
2. Eq. 5 on U, Eq. 6 and Eq. 7 per layer — :mod:`fedlib.romoa.similarity`.
3. Mean shift per parameter across participants — :mod:`fedlib.romoa.meanshift` — gives
   each parameter's centroid c_w per measurement.
4. Eqs. 8–10 generating functions, Eq. 11 minimum, softmax over participants and momentum
   F_t = β·softmax + (1 − β)·F_{t−1}, F₀ = 1/n — :mod:`fedlib.romoa.factors`.
5. At sync points, Σᵢ Fⁱ ⊙ Δᵢ (Algorithm 2, line 21) — :class:`Romoa`.

Ambiguities and the named options (``Romoa(selection=..., elementwise=..., pearson=...,
bandwidth=..., generating=...)``). ``reading="literal"`` and ``reading="calibrated"`` are
two *presets* of these options, nothing more: ``literal`` = parameter / sign / printed /
auto / signed (every equation as printed) and ``calibrated`` = path / cosine / centered /
robust / cluster_penalty. The last column changes two different kinds of thing: four
*measurement calibrations* (Eq. 4's ranking, Eq. 5's scale, Eq. 7 as Pearson's r, the
mean-shift bandwidth), and one *replacement of the generating function* (Eqs. 8–10's
printed f = m − c by the unprinted ``"cluster_penalty"``). ``notebooks/romoa_ablation``
measures which of the five does the work against UPA; an explicit option always overrides
the preset's:

================== ============================== =======================================
ambiguity          literal preset (as printed)    calibrated preset
================== ============================== =======================================
γ                  the paper uses γ for two things, the moving rate (Algorithms 1–2) and
                   the selection ratio ("generally assuming γ = 1/n", §3.2, the only
                   printed value): two parameters, the protocol's ``moving_rate``
                   (``fedlib.romoa_settings`` defaults it to that printed 1/n) and this rule's
                   ``selection_ratio`` (default 1/n).
Eq. 4 ranks        |θᵢ_t'| — "parameters with     |θᵢ_t' − θ̄_t| — the path, the quantity
                   high absolute values"          measured. Ranking θ itself selects the
                   (``selection="parameter"``)    same large weights for everyone (all
                                                  start at θ̄_t) whatever they did.
Eq. 4 values       the union of *indices*; each participant's own values on it (the printed
                   set mixes other participants' values, which Eq. 5 cannot use).
Eq. 5 scale        per coordinate: a·b/(|a||b|)   the cosine of the selected sub-vectors
                   = sign(a)·sign(b) ∈ {−1,0,1}   (the printed transpose and Σ over a set),
                   (``elementwise="sign"``)       one value per participant, on the same
                                                  [−1, 1] scale as Eq. 6 (``"cosine"``).
Eq. 7              L_cos/(std·std) as printed:    Pearson's r (centred cosine), in [−1, 1]
                   scale ≈ 10⁶–10¹⁰ on SGD paths  (``pearson="centered"``).
                   (``pearson="printed"``)
mean shift input   per parameter across participants (c_w is indexed by w only), 1-D.
c_w                the majority cluster's centroid in both (``centroid="own"``, the
                   participant's own cluster, makes an isolated adversary its own
                   reference, f ≈ 0: available for comparison only).
kernel             flat (Fukunaga & Hostetler's mean shift, scikit-learn's ``MeanShift``).
bandwidth          not given: scikit-learn's      at least 3 robust standard deviations
                   default rule (quantile 0.3,    (1.4826·MAD) of the n values
                   ``bandwidth="auto"``)          (``"robust"``): ordinary honest scatter
                                                  stays in one cluster.
Eqs. 8–10          f = m − c (``"signed"``)       not a reading but another function,
                                                  the *cluster penalty*: f = 0 inside the
                                                  majority cluster, −max(0, |m − c| − h)/h
                                                  outside it
                                                  (``generating="cluster_penalty"``).
================== ============================== =======================================

Why the cluster penalty: Eq. 11's softmax is not scale-invariant, and the
lookahead aggregate ā is the plain mean *including* the adversary. (i) With f = m − c on
cosines, the strongest possible outlier (cos −1 vs +1) keeps e⁻² ≈ 14 % of an honest weight;
and an adversary whose path is much longer than the honest ones (Fang et al.'s attack is)
drags ā towards itself, so that its own similarity is the *highest* and the signed f
rewards it. (ii) Three measurements on different scales cannot be compared by a minimum.
(iii) The honest participants' measurements scatter; penalising every deviation from c
makes the honest weights unequal from iteration to iteration. Using mean shift's *clusters*
fixes all three: members of the majority cluster are equally trustworthy (f = 0, equal
shares), everyone else is penalised by how far beyond the cluster's reach it lies, in
bandwidths — a dimensionless number comparable across the three measurements. The
bandwidth must then be wide enough for the honest scatter: scikit-learn's quantile rule,
made for large samples, splits n ≈ 5–10 honest values into several clusters (false alarms
without any attack: in ``romoa_fairness``'s smoke setting with ``bandwidth="auto"`` Jain's
index drops from 0.99 to 0.80), hence the robust rule. ``generating="standardized"``
(−max(0, |m − c| − κs)/s, s = 1.4826·MAD, κ = ``tolerance``) is a z-score alternative,
also too noisy at small n.
Note that in the literal reading c_w cancels in the softmax (all participants share it)
except through which of the three terms attains the minimum.

Cost (n = 10, d = 3.4 M, the Romoa MNIST CNN): everything is vectorised over participants
and parameters except deliberate loops over layers (a handful) and, on a CPU, over blocks of
columns. The server's work is memory-bound, so on a CPU the lookahead aggregate, Eq. 4's
exact per-participant top-k and the Eqs. 5–7 moments come from one read of the (n, d)
uploads (:func:`fedlib.romoa.scan.scan`: cache-sized column blocks shared between threads;
each row's k-th largest magnitude is bracketed by a sample and found by an introselect among
the few bracketed entries, with a full introselect wherever a bracket misses, so it is
exact). On other devices, or with ``similarity.NUMPY_SELECTION = False``, the same quantities
come from ``torch.topk`` and per-layer matrix products.
The per-parameter mean shift is never run on d × n values: layer-wise measurements are
constant on a layer (one mean shift per layer is exact for all its parameters), the
calibrated Eq. 5 is one value per participant, and the literal Eq. 5 takes values in
{−1, 0, 1}, so its mean shift depends only on the count pattern (n₋, n₀, n₊) and is
tabulated once for the (n + 1)² patterns (:func:`fedlib.romoa.meanshift.sign_pattern_table`).
``benchmarks/romoa.py`` compares one server iteration with one participant's local SGD step
(the budget: no more than one step; measurements in ``benchmarks/RESULTS.md``). The code is
split by topic: :mod:`~fedlib.romoa.options` (the named options and presets),
:mod:`~fedlib.romoa.sanitizing` (Eq. 5 on U and Eq. 11 as the aggregator runs them, in
place), :mod:`~fedlib.romoa.reporting` (:meth:`Romoa.report`).

Memory: F is stored densely, (n, d) in the updates' dtype.
"""

from .aggregator import READINGS, Romoa
from .factors import (generating_function, initial_factor, jain_index, representative,
                      sanitized_aggregation, sanitizing_factor)
from .meanshift import cluster, estimate_bandwidth, mean_shift, sign_pattern_table
from .similarity import (elementwise_cosine, layer_cosine, layer_cosine_of, layer_moments,
                         layer_pearson, layer_pearson_of, lookahead_selection,
                         parameter_selection, selected_cosine, selection_threshold)

__all__ = ["Romoa", "READINGS", "generating_function", "initial_factor", "jain_index",
           "representative", "sanitized_aggregation", "sanitizing_factor", "cluster",
           "estimate_bandwidth", "mean_shift", "sign_pattern_table", "elementwise_cosine",
           "layer_cosine", "layer_cosine_of", "layer_moments", "layer_pearson",
           "layer_pearson_of", "lookahead_selection", "parameter_selection", "selected_cosine",
           "selection_threshold"]
