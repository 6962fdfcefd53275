"""Aggregator objects for the engine: ``get(name, **params)`` and ``available()``.

Every object is called as ``agg(updates (n, d), ctx: RoundContext | None = None) -> (d,)``
and afterwards holds ``agg.weights`` (n,), the per-client contribution of that call (0 for
rows excluded as NaN/Inf; see each rule's module for what the number means), and ``agg.name``.
One object per run: centered clipping keeps state across calls (``reset()`` clears it).

Replica batches: every object here has ``batched = True`` and also takes updates (B, n, d)
for B independent federations: the output is (B, d), ``weights`` (B, n), centered
clipping's momentum (B, d), FLTrust's ``ctx.server_update()`` must return (B, d), and
``ctx.client_ids`` may be (B, n). An object without ``batched`` (Romoa) must be called
once per replica, one instance each.

Count-dependent rules (Krum, multi-Krum, trimmed mean, Bulyan) built with
``f="per_call"`` read f from ``ctx.num_malicious`` on every call: an int, or a (B,)
LongTensor giving each replica its own f.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..context import RoundContext
from ._checks import RuleCall, check_count, check_updates
from .averaging import check_client_weights, fltrust_rule, mean_rule, weighted_mean_rule
from .coordinate import clipped_median_rule, median_rule, trimmed_mean_rule
from .iterative import centered_clipping_rule, geometric_median_rule
from .selection import bulyan_rule, krum_rule, multi_krum_rule


class Aggregator:
    """Base class: ``agg(updates, ctx=None) -> Tensor[d]`` with ``weights`` and ``name``."""

    name: str = "aggregator"
    needs_server_update: bool = False
    batched: bool = True
    """Accepts a replica batch (B, n, d) -> (B, d), equal to B separate calls."""

    def __init__(self) -> None:
        self.weights: Tensor | None = None

    def __call__(self, updates: Tensor, ctx: RoundContext | None = None) -> Tensor:
        value, weights = self._aggregate(updates, ctx)
        self.weights = weights.detach()
        return value

    def _aggregate(self, updates: Tensor, ctx: RoundContext | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything learned from previous calls."""
        self.weights = None

    def replica(self, b: int) -> "Aggregator":
        """Replica b's rule for unbatched (n, d) calls, e.g. an attack probing the server's rule.

        Its calls never change this object's state; a stateless rule returns a fresh copy.
        """
        view = copy.copy(self)
        w = self.weights
        view.weights = w[b].clone() if w is not None and w.dim() == 2 and b < len(w) else None
        return view

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Rule(Aggregator):
    """A stateless rule with fixed, validated parameters."""

    def __init__(self, rule: RuleCall) -> None:
        super().__init__()
        self.rule = rule
        self.name = rule.name

    def _aggregate(self, updates: Tensor, ctx: RoundContext | None) -> tuple[Tensor, Tensor]:
        return self.rule(updates)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.rule.params.items())
        return f"Rule({self.name!r}{', ' if args else ''}{args})"


class WeightedMean(Aggregator):
    """FedAvg weighted by fixed per-client weights (e.g. sample counts n_k).

    ``client_weights[k]`` is client k's weight; each call uses the entries of
    ``ctx.client_ids`` or, without ids, requires one weight per row in row order.
    """

    name = "weighted_mean"

    def __init__(self, client_weights: Tensor | Sequence[float]) -> None:
        super().__init__()
        self.client_weights = torch.as_tensor(client_weights, dtype=torch.float64)
        if self.client_weights.dim() != 1 or self.client_weights.numel() == 0:
            raise ValueError("weighted_mean: client_weights must be a non-empty 1-D sequence")
        self.rule = weighted_mean_rule()

    def _aggregate(self, updates: Tensor, ctx: RoundContext | None) -> tuple[Tensor, Tensor]:
        x = check_updates(updates, self.name)
        ids = None if ctx is None else ctx.client_ids
        w = self.client_weights if ids is None else self.client_weights[ids.cpu().long()]
        w = check_client_weights(w, x.shape[-2], x, self.name)
        return self.rule(x, row_params={"client_weights": w})


class FLTrust(Aggregator):
    """FLTrust; Δ₀ comes from ``ctx.server_update()`` on every call."""

    name = "fltrust"
    needs_server_update = True

    def __init__(self) -> None:
        super().__init__()
        self.rule = fltrust_rule()

    def _aggregate(self, updates: Tensor, ctx: RoundContext | None) -> tuple[Tensor, Tensor]:
        if ctx is None or ctx.server_update is None:
            raise ValueError("fltrust needs ctx.server_update (the root-set update Δ₀); "
                             "got no RoundContext or one without server_update")
        return self.rule(updates, batch_params={"server_update": ctx.server_update()})


class CenteredClipping(Aggregator):
    """Centered clipping with the server momentum v (the previous aggregate) kept across calls.

    v advances only on calls with a RoundContext whose ``sync`` is True (an applied
    aggregation). Calls without ctx, e.g. an attack probing the rule through
    ``AttackContext.aggregator``, and Romoa's lookahead iterations (``sync=False``) use v
    but leave it unchanged. ``center_weight`` is the weight a of v₀ in the last output
    a·v₀ + Σᵢ wᵢΔᵢ (``weights`` = w); for a replica batch the momentum is (B, d) and
    ``center_weight`` a (B,) tensor. ``radius`` (the clipping radius τ): see
    :func:`fedlib.aggregators.centered_clipping` (default ``"median_norm"``, the median upload
    norm of each call).
    """

    name = "centered_clipping"

    def __init__(self, radius: float | str = "median_norm", iters: int = 1) -> None:
        super().__init__()
        self.rule = centered_clipping_rule(radius, iters)
        self.momentum: Tensor | None = None
        self.center_weight: float | Tensor | None = None

    def _aggregate(self, updates: Tensor, ctx: RoundContext | None) -> tuple[Tensor, Tensor]:
        x = check_updates(updates, self.name)
        v0 = self.momentum
        want = (*x.shape[:-2], x.shape[-1])
        if v0 is not None and (tuple(v0.shape) != want or v0.device != x.device):
            raise ValueError(f"centered_clipping: stored momentum has shape "
                             f"{tuple(v0.shape)} on {v0.device}, updates are "
                             f"{tuple(x.shape)} on {x.device}; call reset() between runs")
        value, w = self.rule(x, batch_params={} if v0 is None else {"momentum": v0})
        center = 1.0 - w.sum(dim=-1)
        self.center_weight = float(center) if x.dim() == 2 else center.detach()
        if ctx is not None and ctx.sync:
            self.momentum = value.detach().clone()
        return value, w

    def reset(self) -> None:
        super().reset()
        self.momentum = None
        self.center_weight = None

    def replica(self, b: int) -> "CenteredClipping":
        """Replica b's rule with its own copy of momentum[b] (for a batch); see the base class."""
        view = copy.copy(self)
        view.weights, view.center_weight = None, None
        if self.momentum is not None and self.momentum.dim() == 2:
            view.momentum = self.momentum[b].clone()
        elif self.momentum is not None:
            view.momentum = self.momentum.clone()
        return view


class PerCallF(Aggregator):
    """A count-dependent rule built with ``f="per_call"``: f = ``ctx.num_malicious`` per call.

    ``ctx.num_malicious`` is an int (every replica) or a (B,) integer tensor (one f per
    replica; replicas sharing an f run as one batch, a loop over the distinct values).
    A count the rule cannot tolerate with n uploads (Krum: n > 2f + 2, trimmed mean: n > 2f,
    Bulyan: n ≥ 4f + 3) is capped at the largest f it accepts: with 10 uploads and 4 sampled
    attackers Krum runs with f = 3, as the attackers' simulator of L2A does. Negative or
    non-integer counts are errors naming the replica.
    """

    def __init__(self, name: str, build: Callable[[int], RuleCall]) -> None:
        super().__init__()
        self.name = name
        self.build = build

    def _counts(self, ctx: RoundContext | None, batch: int | None) -> Tensor:
        f = None if ctx is None else getattr(ctx, "num_malicious", None)
        if f is None:
            raise ValueError(f"{self.name} built with f='per_call' needs ctx.num_malicious "
                             "(an int, or one per replica)")
        fs = torch.as_tensor(f)
        if fs.is_floating_point() or fs.dtype == torch.bool:
            raise ValueError(f"{self.name}: ctx.num_malicious must be integer, got {fs.dtype}")
        fs = fs.reshape(-1).cpu()
        want = 1 if batch is None else batch
        if fs.numel() == 1:
            fs = fs.expand(want)
        if fs.numel() != want:
            raise ValueError(f"{self.name}: ctx.num_malicious has {fs.numel()} entries for "
                             f"{want} replicas")
        return fs

    def _aggregate(self, updates: Tensor, ctx: RoundContext | None) -> tuple[Tensor, Tensor]:
        x = check_updates(updates, self.name)
        if x.dim() == 2:
            return self._rule(int(self._counts(ctx, None)[0]), x.shape[0], None)(x)
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        xb = x.reshape(-1, n, d)
        fs = self._counts(ctx, xb.shape[0])
        value = torch.empty(xb.shape[0], d, dtype=x.dtype, device=x.device)
        w = torch.empty(xb.shape[0], n, dtype=x.dtype, device=x.device)
        for f in torch.unique(fs).tolist():  # one batched call per distinct f
            idx = (fs == f).nonzero().squeeze(1)
            rule = self._rule(f, n, int(idx[0]))
            dev = idx.to(x.device)
            value[dev], w[dev] = rule(xb[dev], replica_ids=idx)
        return value.reshape(*lead, d), w.reshape(*lead, n)

    def _rule(self, f: int, n: int, replica: int | None) -> RuleCall:
        """The rule for f = min(ctx.num_malicious, the largest f it accepts with n uploads)."""
        where = "" if replica is None else f" in replica {replica}"
        try:
            rule = self.build(check_count(f, "f (ctx.num_malicious)", self.name))
        except ValueError as err:
            raise ValueError(f"{err}{where}") from None
        while n < rule.min_rows and f > 0:     # more attackers than the rule tolerates: cap f
            f -= 1
            rule = self.build(f)
        if n < rule.min_rows:
            raise ValueError(f"{self.name} needs {rule.requirement} with f = {f}; "
                             f"got n={n}{where}")
        return rule

    def __repr__(self) -> str:
        return f"PerCallF({self.name!r}, f='per_call')"


def _count_rule(name: str, build: Callable[..., RuleCall]) -> Callable[..., Aggregator]:
    """Builder for a rule with a count f: a fixed f, or ``f="per_call"`` (:class:`PerCallF`)."""

    def builder(f: int | str, **params: Any) -> Aggregator:
        if isinstance(f, str):
            if f != "per_call":
                raise ValueError(f"{name}: f must be an integer or 'per_call', got {f!r}")
            build(0, **params)  # validates the other parameters now
            return PerCallF(name, lambda count: build(count, **params))
        return Rule(build(f, **params))

    builder.__signature__ = inspect.signature(build)  # type: ignore[attr-defined]
    return builder


def _romoa(**params: Any) -> Aggregator:
    from fedlib.romoa import Romoa  # lazy: written separately, imported only when asked for

    return Romoa(**params)


_BUILDERS: dict[str, Callable[..., Any]] = {
    "mean": lambda: Rule(mean_rule()),
    "weighted_mean": WeightedMean,
    "krum": _count_rule("krum", krum_rule),
    "multi_krum": _count_rule("multi_krum", lambda f, m=None: multi_krum_rule(f, m)),
    "median": lambda: Rule(median_rule()),
    "trimmed_mean": _count_rule("trimmed_mean", trimmed_mean_rule),
    "clipped_median": lambda threshold=2.0: Rule(clipped_median_rule(threshold)),
    "geometric_median": lambda iters=10, eps=1e-6, tol=0.0:
        Rule(geometric_median_rule(iters, eps, tol)),
    "fltrust": FLTrust,
    "bulyan": _count_rule("bulyan", bulyan_rule),
    "centered_clipping": CenteredClipping,
    "romoa": _romoa,
}
_ALIASES = {"rfa": "geometric_median"}


_RENAMED_PARAMS: dict[str, dict[str, str]] = {"centered_clipping": {"tau": "radius"}}
"""Former parameter names that now fail loudly (τ is Romoa's syncing period elsewhere)."""


def available() -> list[str]:
    """The registry's names (aliases included), sorted."""
    return sorted([*_BUILDERS, *_ALIASES])


def get(name: str, **params: Any) -> Any:
    """A fresh aggregator object for rule ``name`` with parameters ``params``.

    Parameters are validated here (ValueError), not at the first call. Unknown names raise
    ValueError listing :func:`available`. ``"romoa"`` imports ``fedlib.romoa.Romoa`` lazily.
    """
    key = name.lower() if isinstance(name, str) else ""
    key = _ALIASES.get(key, key)
    if key not in _BUILDERS:
        raise ValueError(f"unknown aggregator {name!r}; available: {', '.join(available())}")
    renamed = {old: new for old, new in _RENAMED_PARAMS.get(key, {}).items() if old in params}
    if renamed:
        raise ValueError(f"aggregator {key!r}: parameter(s) renamed, use "
                         + ", ".join(f"{new!r} instead of {old!r}" for old, new in renamed.items()))
    builder = _BUILDERS[key]
    if key == "romoa":
        return builder(**params)
    try:
        inspect.signature(builder).bind(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for aggregator {name!r}: {err}") from None
    return builder(**params)
