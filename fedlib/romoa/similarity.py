"""Romoa's lookahead similarity measurement (§3.2, Eqs. 4–7).

Every function takes the participants' *paths* since the last sync point as an (n, d)
matrix. The engine uploads deltas Δᵢ = θ̄_t − θᵢ_t', i.e. the negated paths; all the
measurements here are products of a participant's path with the lookahead aggregate's path
(the mean of the paths, Fig. 3), so they are unchanged when both are negated and the deltas
can be passed as they are.

The layer-wise measurements (Eqs. 6–7) are computed from per-layer *moments* (Σa·b, Σa,
Σa², Σb, Σb²) gathered in one matrix product per layer (:func:`layer_moments`), so a whole
measurement round reads the (n, d) matrix a small, fixed number of times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from . import scan

Layers = Sequence[slice]


def selection_count(d: int, ratio: float) -> int:
    """k = ⌈ratio·d⌉ clipped to [1, d]: how many parameters one participant selects (§3.2)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"selection_ratio must be in (0, 1], got {ratio!r}")
    return min(d, max(1, math.ceil(ratio * d - 1e-9)))


def _select_numpy(a: np.ndarray, k: int, theta: Optional[np.ndarray] = None,
                  magnitude: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-row k-th largest τ (n,) and the union of {≥ τᵢ, > 0} (see :mod:`.scan`).

    The magnitudes are ``a`` itself, or (``magnitude=True``) |θ − aᵢ| / |aᵢ| formed chunk by
    chunk.
    """
    tau, union, _, _ = scan.scan(a, k, theta, raw=not magnitude,
                                 workers=torch.get_num_threads())
    return tau, union


NUMPY_SELECTION = True
"""Use the NumPy selection on CPU tensors (False: ``torch.topk`` everywhere; for tests)."""


def _select(magnitude: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    if magnitude.dim() != 2 or magnitude.shape[0] == 0 or magnitude.shape[1] == 0:
        raise ValueError(f"magnitude must be (n, d) with n, d ≥ 1, got {tuple(magnitude.shape)}")
    n, d = magnitude.shape
    k = selection_count(d, ratio)
    if NUMPY_SELECTION and magnitude.device.type == "cpu" \
            and magnitude.dtype in (torch.float32, torch.float64):
        tau, union = _select_numpy(magnitude.detach().contiguous().numpy(), k)
        return torch.from_numpy(tau), torch.from_numpy(union)
    tau = torch.topk(magnitude, k, dim=1, sorted=False).values.amin(dim=1)
    return tau, ((magnitude >= tau[:, None]) & (magnitude > 0)).any(dim=0)


def selection_threshold(magnitude: Tensor, ratio: float) -> Tensor:
    """τᵢ: the k-th largest entry of each row of ``magnitude`` (n, d), k = ⌈ratio·d⌉ (§3.2).

    Exact. On a CPU, a sample-bracketed introselect in NumPy (faster than ``torch.topk``
    for the Romoa MNIST CNN, ``benchmarks/RESULTS.md``); elsewhere ``torch.topk``.
    """
    return _select(magnitude, ratio)[0]


def parameter_selection(magnitude: Tensor, ratio: float) -> Tensor:
    """Eq. 4: the union over participants of each one's top-``ratio`` entries by magnitude.

    ``magnitude`` is (n, d): |θᵢ_t'| (``selection="parameter"``) or |θᵢ_t' − θ̄_t|
    (``"path"``). Returns
    a (d,) bool mask U. Entries tied with a participant's threshold are all selected; an entry
    of magnitude 0 is never selected (it is not a "high absolute value"), so a participant
    with fewer than k non-zero entries selects only those.
    """
    return _select(magnitude, ratio)[1].to(magnitude.device)


def lookahead_selection(deltas: Tensor, ratio: float, theta: Optional[Tensor] = None) -> Tensor:
    """Eq. 4 straight from the uploads Δᵢ = θ̄_t − θᵢ_t' (n, d): ranks |θ̄_t − Δᵢ| = |θᵢ_t'|
    when ``theta`` = θ̄_t is given (``selection="parameter"``), else |Δᵢ| = |θᵢ_t' − θ̄_t|
    (``"path"``).

    The same mask as :func:`parameter_selection` of those magnitudes; on a CPU the
    magnitudes are formed row by row inside the selection threads (no (n, d) temporary).
    """
    if deltas.dim() != 2 or deltas.shape[0] == 0 or deltas.shape[1] == 0:
        raise ValueError(f"deltas must be (n, d) with n, d ≥ 1, got {tuple(deltas.shape)}")
    n, d = deltas.shape
    if NUMPY_SELECTION and deltas.device.type == "cpu" \
            and deltas.dtype in (torch.float32, torch.float64):
        k = selection_count(d, ratio)
        th = None if theta is None else theta.detach().to(deltas.dtype).contiguous().numpy()
        _, union = _select_numpy(deltas.detach().contiguous().numpy(), k, th, magnitude=True)
        return torch.from_numpy(union)
    mag = (theta[None, :] - deltas).abs() if theta is not None else deltas.abs()
    return parameter_selection(mag, ratio)


def elementwise_cosine(paths: Tensor, aggregate: Tensor) -> Tensor:
    """Eq. 5 as printed, one coordinate at a time: sign(aᵢ_w)·sign(ā_w) ∈ {−1, 0, 1}.

    On a single coordinate the printed ratio a·b / (√a²·√b²) is the product of signs (0 when
    either factor is 0). ``paths`` (n, m) and ``aggregate`` (m,) hold the selected columns.
    """
    return torch.sign(paths) * torch.sign(aggregate)


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den is 0 (the cosine of a zero vector is taken to be 0)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.zeros_like(num))


@dataclass
class LayerMoments:
    """Per-layer sums from which Eqs. 5–7 follow (float64; n participants, L layers).

    ``dot`` Σ aᵢ·ā, ``sum`` Σ aᵢ, ``sq`` Σ aᵢ² are (n, L); ``agg_sum`` Σ ā and ``agg_sq``
    Σ ā² are (L,); ``size`` is M_l (L,). With a selection mask U, ``sel_dot`` (n,),
    ``sel_sq`` (n,) and ``agg_sel_sq`` (scalar) are the same sums over U.
    """

    dot: Tensor
    sum: Tensor
    sq: Tensor
    agg_sum: Tensor
    agg_sq: Tensor
    size: Tensor
    sel_dot: Optional[Tensor] = None
    sel_sq: Optional[Tensor] = None
    agg_sel_sq: Optional[Tensor] = None


def layer_moments(paths: Tensor, aggregate: Tensor, layers: Layers,
                  selected: Optional[Tensor] = None) -> LayerMoments:
    """The sums behind Eqs. 5–7: per layer a matrix–vector product, a row sum and a norm.

    ``paths`` is (n, d), ``aggregate`` (d,), ``layers`` contiguous slices. With ``selected``
    (a (d,) bool mask U) the sums over U are gathered too. (On a CPU the aggregator gets the
    same sums from :func:`lookahead_scan`.)
    """
    dot, tot, sq, agg_sum, agg_sq = [], [], [], [], []
    for sl in layers:
        block, a = paths[:, sl], aggregate[sl]
        dot.append(block @ a)
        tot.append(block.sum(dim=1))
        sq.append(torch.linalg.vector_norm(block, dim=1).square())
        agg_sum.append(a.sum())
        agg_sq.append(torch.dot(a, a))
    m = LayerMoments(dot=torch.stack(dot, 1).double(), sum=torch.stack(tot, 1).double(),
                     sq=torch.stack(sq, 1).double(), agg_sum=torch.stack(agg_sum).double(),
                     agg_sq=torch.stack(agg_sq).double(),
                     size=torch.tensor([sl.stop - sl.start for sl in layers],
                                       dtype=torch.float64, device=paths.device))
    if selected is not None:
        sel = selected.to(paths.dtype)
        a_sel = aggregate * sel
        m.sel_dot = (paths @ a_sel).double()
        m.sel_sq = (paths.square() @ sel).double()
        m.agg_sel_sq = torch.dot(a_sel, a_sel).double()
    return m


def selected_cosine(moments: LayerMoments) -> Tensor:
    """Eq. 5 with ``elementwise="cosine"``: the cosine of aᵢ and ā on the selected set U, (n,)."""
    if moments.sel_dot is None:
        raise ValueError("selected_cosine needs moments computed with a selection mask")
    den = torch.sqrt(moments.sel_sq * moments.agg_sel_sq)
    return _safe_ratio(moments.sel_dot, den)


def layer_cosine(moments: LayerMoments) -> Tensor:
    """Eq. 6: L_cosine^{i[l]}, the cosine of aᵢ^{[l]} and ā^{[l]} per layer, (n, L)."""
    den = torch.sqrt(moments.sq * moments.agg_sq[None, :])
    return _safe_ratio(moments.dot, den)


def layer_pearson(moments: LayerMoments, centered: bool) -> Tensor:
    """Eq. 7 per layer, (n, L): as printed (``centered=False``) or Pearson's r (``True``).

    As printed, L_pearson = L_cosine / (std(aᵢ^{[l]})·std(ā^{[l]})) with population standard
    deviations: its scale is 1/(std·std) (≈ 10⁶–10¹⁰ for SGD paths), not that of a
    correlation. ``centered=True`` is Pearson's correlation, the cosine of the centred
    vectors, in [−1, 1]. A zero standard deviation gives 0.
    """
    M = moments.size[None, :]
    mean_a = moments.sum / M
    mean_b = (moments.agg_sum / moments.size)[None, :]
    var_a = (moments.sq / M - mean_a ** 2).clamp_min(0)
    var_b = (moments.agg_sq / moments.size - (moments.agg_sum / moments.size) ** 2).clamp_min(0)
    if not centered:
        den = torch.sqrt(var_a * var_b[None, :])
        return _safe_ratio(layer_cosine(moments), den)
    cov = moments.dot / M - mean_a * mean_b
    den = torch.sqrt(var_a * var_b[None, :])
    return _safe_ratio(cov, den).clamp(-1.0, 1.0)


def layer_cosine_of(paths: Tensor, aggregate: Tensor, layers: Layers) -> Tensor:
    """Eq. 6 straight from paths (n, d) and the aggregate path (d,): (n, L)."""
    return layer_cosine(layer_moments(paths, aggregate, layers))


def layer_pearson_of(paths: Tensor, aggregate: Tensor, layers: Layers, centered: bool) -> Tensor:
    """Eq. 7 straight from paths (n, d) and the aggregate path (d,): (n, L)."""
    return layer_pearson(layer_moments(paths, aggregate, layers), centered)


def lookahead_scan(deltas: Tensor, layers: Layers, ratio: float, theta: Optional[Tensor] = None,
                   with_selected: bool = False) -> tuple[Tensor, Tensor, LayerMoments]:
    """The lookahead aggregate ā, Eq. 4's U and the Eqs. 5–7 moments, in one read of Δ (n, d).

    Equal to ``ā = deltas.mean(0)``, ``U = lookahead_selection(deltas, ratio, theta)`` and
    ``layer_moments(deltas, ā, layers, selected=U if with_selected else None)`` up to float
    rounding. On a CPU: the blocked pass of :func:`fedlib.romoa.scan.scan`, plus, with
    ``with_selected``, :func:`fedlib.romoa.scan.selected_sums` for the sums over U.
    """
    if deltas.dim() != 2 or deltas.shape[0] == 0 or deltas.shape[1] == 0:
        raise ValueError(f"deltas must be (n, d) with n, d ≥ 1, got {tuple(deltas.shape)}")
    n, d = deltas.shape
    if not (NUMPY_SELECTION and deltas.device.type == "cpu"
            and deltas.dtype in (torch.float32, torch.float64)):
        agg = deltas.sum(dim=0).div_(n)
        selected = lookahead_selection(deltas, ratio, theta)
        return agg, selected, layer_moments(deltas, agg, layers,
                                            selected=selected if with_selected else None)
    x = deltas.detach().contiguous().numpy()
    th = None if theta is None else theta.detach().to(deltas.dtype).contiguous().numpy()
    workers = torch.get_num_threads()
    _, union, agg, mom = scan.scan(x, selection_count(d, ratio), th, layers=layers,
                                   moments=True, workers=workers)
    mom = torch.from_numpy(mom)
    a = torch.from_numpy(agg)
    m = LayerMoments(dot=mom[..., 0], sum=mom[..., 1], sq=mom[..., 2],
                     agg_sum=torch.stack([a[sl].sum() for sl in layers]).double(),
                     agg_sq=torch.stack([torch.dot(a[sl], a[sl]) for sl in layers]).double(),
                     size=torch.tensor([sl.stop - sl.start for sl in layers],
                                       dtype=torch.float64))
    if with_selected:
        dot, sq, agg_sq = scan.selected_sums(x, agg, union, workers)
        m.sel_dot, m.sel_sq = torch.from_numpy(dot), torch.from_numpy(sq)
        m.agg_sel_sq = torch.tensor(agg_sq, dtype=torch.float64)
    return a, torch.from_numpy(union), m
