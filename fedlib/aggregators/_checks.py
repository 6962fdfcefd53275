"""Input validation and the non-finite policy shared by every aggregation rule.

Every rule takes updates of shape (n, d) or a batch of B independent problems
(..., n, d) and returns (d,) or (..., d): a batched call equals B separate calls (see
``tests/test_aggregators_batched.py`` for the tolerance).

Policy (the same for every rule): a row of the (n, d) update matrix that holds any NaN or
±Inf is *excluded* before the rule runs, with one ``RuntimeWarning`` saying how many rows
were dropped; its reported weight is 0. If fewer rows remain than the rule needs (e.g.
Krum's n > 2f + 2, with f unchanged: a broken upload is not assumed to be one of the f
Byzantine ones), a ``ValueError`` is raised. Finite but huge rows are kept: they are the
Byzantine inputs the robust rules exist for. In a batch the policy applies per replica:
clean replicas run as one batched call, each replica with a non-finite row runs alone
(a loop over those replicas only, which is rare). A rule whose core detects non-finite rows
itself (``RuleCall.checks_rows``) runs on the unchecked rows first, which saves the separate
pass over them; only if it reports non-finite rows (:class:`NonFiniteRows`) does the policy
above run, so the result, warnings and errors are the same.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

Core = Callable[..., tuple[Tensor, Tensor]]
"""A rule's core: (finite rows (n, d) or (B, n, d), **params) -> (aggregate, weights)."""


class NonFiniteRows(Exception):
    """Raised by a core called with ``unchecked=True`` whose rows hold NaN/Inf."""


def check_updates(updates: Tensor, rule: str) -> Tensor:
    """Validate an (..., n, d) floating-point update tensor with n ≥ 1, d ≥ 1 and no empty batch."""
    if not isinstance(updates, Tensor):
        raise ValueError(f"{rule}: updates must be a torch.Tensor of shape (n, d) or "
                         f"(..., n, d), got {type(updates).__name__}")
    if updates.dim() < 2:
        raise ValueError(f"{rule}: updates must have shape (n, d) or (..., n, d), "
                         f"got {tuple(updates.shape)}")
    if updates.numel() == 0:
        raise ValueError(f"{rule}: empty update tensor of shape {tuple(updates.shape)}")
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
    """A finite (d,) vector, or (B, d) for a batch like (B, n, d), on the updates' device/dtype."""
    if not isinstance(v, Tensor):
        raise ValueError(f"{rule}: {what} must be a torch.Tensor, got {type(v).__name__}")
    want = (*like.shape[:-2], like.shape[-1])
    if tuple(v.shape) != want:
        raise ValueError(f"{rule}: {what} must have shape {want}, got {tuple(v.shape)}")
    v = v.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{rule}: {what} contains NaN or Inf")
    return v


def weighted_sum(w: Tensor, x: Tensor) -> Tensor:
    """Σᵢ wᵢxᵢ: (n,) @ (n, d) -> (d,), or per replica (B, n), (B, n, d) -> (B, d)."""
    if x.dim() == 2:
        return w @ x
    return (w.unsqueeze(-2) @ x).squeeze(-2)


def finite_rows(updates: Tensor) -> Tensor:
    """(..., n) bool mask of rows whose entries are all finite.

    Fast path: a row sum is finite only if every entry is (NaN/Inf propagate through a
    sum), so only rows with a non-finite sum (a NaN/Inf or an overflow) are checked entry-wise.
    """
    ok = torch.isfinite(updates.sum(dim=-1))
    if bool(ok.all()):
        return ok
    suspect = ~ok
    ok[suspect] = torch.isfinite(updates[suspect]).all(dim=-1)
    return ok


def _nonfinite_aggregate(rule: str, where: str = "") -> ValueError:
    return ValueError(f"{rule}: the aggregate of finite updates overflowed to NaN/Inf{where}; "
                      "rescale the updates or use a higher precision dtype")


def _run_unchecked(core: Core, x: Tensor, params: dict[str, Any]
                   ) -> tuple[Tensor, Tensor] | None:
    """``core`` on rows that may hold NaN/Inf (``RuleCall.checks_rows``); None if they do."""
    try:
        return core(x, **params, unchecked=True)
    except NonFiniteRows:
        return None


def _run_single(core: Core, x: Tensor, rule: str, min_rows: int, requirement: str,
                row_params: dict[str, Tensor], params: dict[str, Any],
                where: str = "", stacklevel: int = 5,
                checks_rows: bool = False) -> tuple[Tensor, Tensor]:
    """One (n, d) problem: drop non-finite rows (warning), check the row count, run ``core``."""
    n = x.shape[0]
    if checks_rows and n >= min_rows:
        done = _run_unchecked(core, x, {**params, **row_params})
        if done is not None:
            if not bool(finite_rows(done[0].unsqueeze(0)).all()):
                raise _nonfinite_aggregate(rule, where)
            return done
    keep = finite_rows(x)
    n_ok = int(keep.sum())
    if n_ok < n:
        warnings.warn(f"{rule}: excluded {n - n_ok} of {n} updates containing NaN/Inf{where}",
                      RuntimeWarning, stacklevel=stacklevel)
        if n_ok == 0:
            raise ValueError(f"{rule}: all {n} updates contain NaN/Inf{where}")
        x = x[keep]
        row_params = {k: v[keep.to(v.device)] for k, v in row_params.items()}
    if n_ok < min_rows:
        extra = f" after excluding {n - n_ok} non-finite rows" if n_ok < n else ""
        raise ValueError(f"{rule} needs {requirement}; got n={n_ok}{extra}{where}")
    value, w = core(x, **params, **row_params)
    if not bool(finite_rows(value.unsqueeze(0)).all()):
        raise _nonfinite_aggregate(rule, where)
    if n_ok < n:
        full = torch.zeros(n, dtype=w.dtype, device=w.device)
        full[keep] = w
        w = full
    return value, w


def _index(params: dict[str, Tensor], idx: Any) -> dict[str, Tensor]:
    return {k: v[idx] for k, v in params.items()}


def run_rule(core: Core, updates: Tensor, rule: str, min_rows: int = 1,
             requirement: str = "n ≥ 1", row_params: dict[str, Tensor] | None = None,
             batch_params: dict[str, Tensor] | None = None,
             replica_ids: Tensor | None = None, checks_rows: bool = False,
             **params) -> tuple[Tensor, Tensor]:
    """Validate, drop non-finite rows (warning), check the row count, run ``core``.

    ``row_params`` are per-row tensors (n,) — or (..., n) for a batch — filtered like the
    rows (e.g. client weights); ``batch_params`` are per-replica tensors whose leading
    dimensions are the batch's (e.g. FLTrust's Δ₀ (..., d)); for an unbatched call they are
    passed through unchanged. ``replica_ids`` (B,) name the replicas in error messages
    (default 0..B−1). Returns the aggregate (..., d) and the weights (..., n) of *all*
    input rows, 0 for dropped ones. A non-finite aggregate of finite rows (overflow)
    raises ValueError rather than being returned. ``checks_rows``: ``core`` accepts
    ``unchecked=True`` and then raises :class:`NonFiniteRows` if its rows hold NaN/Inf, so
    it runs first on the unchecked rows (see the module docstring).
    """
    x = check_updates(updates, rule)
    row_params = dict(row_params or {})
    batch_params = dict(batch_params or {})
    if x.dim() == 2:
        return _run_single(core, x, rule, min_rows, requirement, row_params,
                           {**params, **batch_params}, checks_rows=checks_rows)
    lead, (n, d) = x.shape[:-2], x.shape[-2:]
    xb = x.reshape(-1, n, d)
    b_count = xb.shape[0]
    for k, v in {**row_params, **batch_params}.items():
        if not isinstance(v, Tensor) or tuple(v.shape[:len(lead)]) != tuple(lead) \
                or (k in row_params and tuple(v.shape) != (*lead, n)):
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{rule}: {k} must be a tensor with the batch's leading "
                             f"dimensions {tuple(lead)}, got {shape}")
    row_params = {k: v.reshape(b_count, n) for k, v in row_params.items()}
    batch_params = {k: v.reshape(b_count, *v.shape[len(lead):])
                    for k, v in batch_params.items()}
    ids = torch.arange(b_count) if replica_ids is None else replica_ids.reshape(-1).cpu()
    done = _run_unchecked(core, xb, {**params, **row_params, **batch_params}) \
        if checks_rows and n >= min_rows else None
    clean = None if done is not None else finite_rows(xb).all(dim=-1)
    if done is not None or bool(clean.all()):
        if n < min_rows:
            raise ValueError(f"{rule} needs {requirement}; got n={n} in every replica")
        value, w = done or core(xb, **params, **row_params, **batch_params)
        bad = ~finite_rows(value)
        if bool(bad.any()):
            raise _nonfinite_aggregate(rule, f" in replica {int(ids[bad.cpu()][0])}")
        return value.reshape(*lead, d), w.reshape(*lead, n)
    value = torch.empty(b_count, d, dtype=x.dtype, device=x.device)
    w = torch.zeros(b_count, n, dtype=x.dtype, device=x.device)
    if bool(clean.any()):  # the clean replicas still run as one batch
        sub = clean.nonzero().squeeze(1)
        value[sub], w[sub] = run_rule(core, xb[sub], rule, min_rows, requirement,
                                      _index(row_params, sub), _index(batch_params, sub),
                                      ids[sub.cpu()], **params)
    for b in (~clean).nonzero().squeeze(1).tolist():  # only replicas with NaN/Inf rows
        value[b], w[b] = _run_single(core, xb[b], rule, min_rows, requirement,
                                     _index(row_params, b),
                                     {**params, **_index(batch_params, b)},
                                     where=f" in replica {int(ids[b])}")
    return value.reshape(*lead, d), w.reshape(*lead, n)


def row_norms(x: Tensor) -> Tensor:
    """(..., n) Euclidean norms ‖xᵢ‖₂ that neither overflow nor underflow in the squares.

    Rows whose plain norm overflows (entries ≳ 1e19 in float32) or comes close to the
    underflow range (norm < √(tiny/eps), ≈ 3e-16 in float32: squares of entries ≲ 1e-19
    vanish) are recomputed as max|xᵢⱼ|·‖xᵢ/max|xᵢⱼ|‖. Only an all-zero row has norm 0; a
    norm beyond the dtype's range stays +inf.
    """
    norms = torch.linalg.vector_norm(x, dim=-1)
    info = torch.finfo(x.dtype)
    bad = ~torch.isfinite(norms) | (norms < (info.tiny / info.eps) ** 0.5)
    if bool(bad.any()):
        rows = x[bad]
        peak = rows.abs().amax(dim=-1, keepdim=True)
        scaled = torch.linalg.vector_norm(rows / torch.where(peak > 0, peak, 1), dim=-1)
        norms[bad] = torch.where(peak.squeeze(-1) > 0, peak.squeeze(-1) * scaled, 0)
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
    checks_rows: bool = False
    """``core`` accepts ``unchecked=True`` (see :func:`run_rule`)."""

    def __call__(self, updates: Tensor, row_params: dict[str, Tensor] | None = None,
                 batch_params: dict[str, Tensor] | None = None,
                 replica_ids: Tensor | None = None, **per_call: Any) -> tuple[Tensor, Tensor]:
        return run_rule(self.core, updates, self.name, self.min_rows, self.requirement,
                        row_params=row_params, batch_params=batch_params,
                        replica_ids=replica_ids, checks_rows=self.checks_rows,
                        **self.params, **per_call)
