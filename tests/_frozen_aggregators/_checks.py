"""Input validation and the non-finite policy shared by every aggregation rule.

Policy (the same for every rule): a row of the (n, d) update matrix that holds any NaN or
±Inf is *excluded* before the rule runs, with one ``RuntimeWarning`` saying how many rows
were dropped; its reported weight is 0. If fewer rows remain than the rule needs (e.g.
Krum's n > 2f + 2, with f unchanged: a broken upload is not assumed to be one of the f
Byzantine ones), a ``ValueError`` is raised. Finite but huge rows are kept: they are the
Byzantine inputs the robust rules exist for.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

Core = Callable[..., tuple[Tensor, Tensor]]
"""A rule's core: (finite (n, d) rows, **params) -> (aggregate (d,), weights (n,))."""


def check_updates(updates: Tensor, rule: str) -> Tensor:
    """Validate an (n, d) floating-point update matrix with n ≥ 1 and d ≥ 1."""
    if not isinstance(updates, Tensor):
        raise ValueError(f"{rule}: updates must be a torch.Tensor of shape (n, d), "
                         f"got {type(updates).__name__}")
    if updates.dim() != 2:
        raise ValueError(f"{rule}: updates must have shape (n, d), got {tuple(updates.shape)}")
    if updates.shape[0] == 0 or updates.shape[1] == 0:
        raise ValueError(f"{rule}: empty update matrix of shape {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise ValueError(f"{rule}: updates must be floating point, got {updates.dtype}")
    return updates


def check_count(value: object, what: str, rule: str, minimum: int = 0) -> int:
    """An integer parameter such as f or m, at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{rule}: {what} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{rule}: {what} must be ≥ {minimum}, got {value}")
    return int(value)


def check_positive(value: object, what: str, rule: str) -> float:
    """A finite, strictly positive real parameter (thresholds, smoothing)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or value == float("inf"):
        raise ValueError(f"{rule}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


def check_vector(v: Tensor, like: Tensor, what: str, rule: str) -> Tensor:
    """A finite (d,) vector matching the update dimension, moved to the updates' device/dtype."""
    if not isinstance(v, Tensor):
        raise ValueError(f"{rule}: {what} must be a torch.Tensor, got {type(v).__name__}")
    d = like.shape[1]
    if v.dim() != 1 or v.shape[0] != d:
        raise ValueError(f"{rule}: {what} must have shape ({d},), got {tuple(v.shape)}")
    v = v.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{rule}: {what} contains NaN or Inf")
    return v


def finite_rows(updates: Tensor) -> Tensor:
    """(n,) bool mask of rows whose entries are all finite.

    Fast path: a row sum is finite only if every entry is (NaN/Inf propagate through a
    sum), so only rows with a non-finite sum (a NaN/Inf or an overflow) are checked entry-wise.
    """
    ok = torch.isfinite(updates.sum(dim=1))
    if bool(ok.all()):
        return ok
    suspect = (~ok).nonzero().squeeze(1)
    ok[suspect] = torch.isfinite(updates[suspect]).all(dim=1)
    return ok


def run_rule(core: Core, updates: Tensor, rule: str, min_rows: int = 1,
             requirement: str = "n ≥ 1", row_params: dict[str, Tensor] | None = None,
             **params) -> tuple[Tensor, Tensor]:
    """Validate, drop non-finite rows (warning), check the row count, run ``core``.

    ``row_params`` are (n,) per-row tensors (e.g. client weights) filtered like the rows.
    Returns the aggregate (d,) and the weights (n,) of *all* input rows, 0 for dropped ones.
    A non-finite aggregate of finite rows (overflow) raises ValueError rather than being
    returned.
    """
    x = check_updates(updates, rule)
    n = x.shape[0]
    row_params = dict(row_params or {})
    keep = finite_rows(x)
    n_ok = int(keep.sum())
    if n_ok < n:
        warnings.warn(f"{rule}: excluded {n - n_ok} of {n} updates containing NaN/Inf",
                      RuntimeWarning, stacklevel=4)
        if n_ok == 0:
            raise ValueError(f"{rule}: all {n} updates contain NaN/Inf")
        x = x[keep]
        row_params = {k: v[keep.to(v.device)] for k, v in row_params.items()}
    params.update(row_params)
    if n_ok < min_rows:
        extra = f" after excluding {n - n_ok} non-finite rows" if n_ok < n else ""
        raise ValueError(f"{rule} needs {requirement}; got n={n_ok}{extra}")
    value, w = core(x, **params)
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{rule}: the aggregate of finite updates overflowed to NaN/Inf; "
                         "rescale the updates or use a higher precision dtype")
    if n_ok < n:
        full = torch.zeros(n, dtype=w.dtype, device=w.device)
        full[keep] = w
        w = full
    return value, w


def row_norms(x: Tensor) -> Tensor:
    """(n,) Euclidean norms ‖xᵢ‖₂ that do not overflow when only the sum of squares would.

    Rows whose plain norm overflows (entries ≳ 1e19 in float32) are recomputed as
    max|xᵢⱼ|·‖xᵢ/max|xᵢⱼ|‖; a norm beyond the dtype's range stays +inf.
    """
    norms = torch.linalg.vector_norm(x, dim=1)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        big = x[bad]
        peak = big.abs().amax(dim=1, keepdim=True)
        norms[bad] = peak.squeeze(1) * torch.linalg.vector_norm(big / peak, dim=1)
    return norms


@dataclass(frozen=True)
class RuleCall:
    """A rule with validated parameters: ``call(updates, **per_call) -> (aggregate, weights)``.

    Built by each rule's ``<name>_rule(**params)``; the public function and the registry
    object both run through it, so they validate and treat NaN/Inf identically.
    """

    name: str
    core: Core
    params: dict[str, Any] = field(default_factory=dict)
    min_rows: int = 1
    requirement: str = "n ≥ 1"

    def __call__(self, updates: Tensor, row_params: dict[str, Tensor] | None = None,
                 **per_call: Any) -> tuple[Tensor, Tensor]:
        return run_rule(self.core, updates, self.name, self.min_rows, self.requirement,
                        row_params=row_params, **self.params, **per_call)
