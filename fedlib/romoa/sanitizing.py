"""Eq. 5 on U and Eq. 11 as :class:`fedlib.romoa.Romoa` runs them, in place on F (n, d).

:mod:`fedlib.romoa.similarity` and :mod:`fedlib.romoa.factors` hold the equations one at a
time (``elementwise_cosine``, ``representative``, ``sanitizing_factor``); the functions here
compute the same quantities without materialising (n, d) temporaries: the softmax of
Eq. 11 is constant on a layer off the selected set U, so the momentum F ← (1 − β)F +
β·softmax is applied per layer, and only U's columns get their own softmax.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def selected_columns(x: Tensor, idx: Tensor) -> Tensor:
    """x[:, idx] for an (n, d) matrix (NumPy's gather is the faster one on a CPU)."""
    if x.device.type == "cpu":
        return torch.from_numpy(x.numpy()[:, idx.numpy()])
    return x.index_select(1, idx)


def selected_signs(paths: Tensor, idx: Tensor, aggregate: Tensor) -> Tensor:
    """Eq. 5 as printed on U: sign(aᵢ_w)·sign(ā_w) for the selected columns ``idx``, (n, |U|)."""
    agg = selected_columns(aggregate[None, :], idx)[0].sign_()
    return selected_columns(paths, idx).sign_().mul_(agg)


def layer_momentum(F: Tensor, layers: Sequence[slice], softmax: Tensor, beta: float) -> None:
    """Eq. 11's F ← (1 − β)F + β·softmax, one softmax value per (participant, layer); in place."""
    for j, sl in enumerate(layers):
        part = F[:, sl]
        part.lerp_(softmax[:, j:j + 1].expand_as(part), beta)


def selected_momentum(F: Tensor, layers: Sequence[slice], diff: Tensor, selected: Tensor) -> None:
    """Eq. 11 on U after :func:`layer_momentum`: F += β(softmax_U − softmax_off) on U, in place.

    ``diff`` (n, L) is β times the difference of the two softmaxes of each layer, ``selected``
    the (d,) mask U.
    """
    sel = selected.to(F.dtype)
    for j, sl in enumerate(layers):
        F[:, sl].addr_(diff[:, j], sel[sl])


def signed_softmax(signs: Tensor, centroid: Tensor, f_layer: Tensor, bounds: list[int],
                   beta: float) -> Tensor:
    """β · softmax over participants of min(S − c_w, f_layer) on U (Eqs. 8 and 11), (n, |U|).

    The literal preset (signed, majority centroid): exp is monotone, so with
    K_l = min(0, maxᵢ f_il), exp(g − K) = min(exp(S)·exp(−c_w − K), exp(f_il − K)), where
    S ∈ {−1, 0, 1} are the signs (n, |U|), c_w the column's centroid (|U|,) and f_layer (n, L)
    the layer-wise minimum; ``bounds`` (L + 1) delimit each layer's columns of U. No (n, |U|)
    gather; the column maxima lie in [e⁻², 1] (no overflow, no total underflow).
    """
    dt = signs.dtype
    e = torch.exp(signs)
    colexp = torch.exp(-centroid)                                  # exp(−c_w), (|U|,)
    K = torch.clamp(f_layer.amax(dim=0), max=0.0)                  # (L,)
    cap = torch.exp(f_layer - K).to(dt)                            # (n, L)
    for j in range(len(bounds) - 1):
        r = slice(bounds[j], bounds[j + 1])
        if r.start < r.stop:
            col = (colexp[r] * torch.exp(-K[j])).clamp_(max=1e30).to(dt)
            e[:, r].mul_(col).clamp_(max=cap[:, j:j + 1])
    return e.div_(e.sum(dim=0).div_(beta))


def selected_softmax(generating: Tensor, f_layer: Tensor, bounds: list[int],
                     beta: float) -> Tensor:
    """β · softmax over participants of min(f_S, f_layer) on U (Eq. 11), in place on f_S."""
    fl = f_layer.to(generating.dtype)
    for j in range(len(bounds) - 1):
        generating[:, bounds[j]:bounds[j + 1]].clamp_(max=fl[:, j:j + 1])
    return torch.softmax(generating, dim=0).mul_(beta)


def indices(mask: Tensor) -> Tensor:
    """The sorted indices of a (d,) bool mask (NumPy's is the faster one on a CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)
