"""The two seams of the round loop as ``typing.Protocol``s: aggregation rules and attacks.

``fedlib.federation.Federation.step`` (through ``fedlib.protocols``) relies on exactly these
members; anything that has them can be plugged in, registered or not:

* an **aggregation rule** (:class:`AggregationRule`) is called once per round (synchronous
  protocol) or per sync point (Romoa's protocol, Algorithm 2 line 21) as
  ``rule(updates (n, d), ctx: RoundContext | None) -> Tensor (d,)`` on the deltas
  Δᵢ = θ_ref − θᵢ, and the server sets θ_new = θ_ref − rule(Δ). Afterwards ``rule.weights``
  (n,) is each client's contribution to that call (recorded by runs with ``record_weights``)
  and ``rule.name`` names it in messages. Optional members, read with ``getattr``:
  ``batched`` (:class:`BatchedRule`: also takes a replica batch (B, n, d) -> (B, d); without
  it the loop builds one rule object per replica), ``observe(updates, ctx)``
  (:class:`LookaheadObserver`: shown every lookahead iteration between sync points, Romoa
  Algorithm 2 lines 16–19), ``reset()`` (:class:`Resettable`: forget every previous call) and
  ``needs_server_update`` (FLTrust: ``ctx.server_update`` is then provided).
* an **attack** (:class:`Attack`) is called in every round in which at least one attacker
  is sampled as ``attack(ctx: AttackContext) -> Tensor (m, d)``, the m malicious deltas, which
  replace the attackers' honest uploads. ``name`` names it in messages, ``knowledge``
  (``"full"`` or ``"partial"``) says which fields of the context it may read, and ``targets``
  (None, or (x, y_true, y_poison)) makes runs record the target confidences of a targeted
  attack. ``prepare(task)`` is called once before training when present.
* the **attack seam** of ``Federation.step(malicious=...)`` (:class:`AttackHook`) needs only
  the call: any function ``hook(ctx) -> Tensor (m, d)`` will do
  (:func:`accepts_attack_context` checks the signature).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Protocol, runtime_checkable

from torch import Tensor

from .context import AttackContext, RoundContext


@runtime_checkable
class AggregationRule(Protocol):
    """Aggr: (n, d) deltas -> (d,) (L2A §2, Romoa Algorithm 2 line 21), with weights and name."""

    name: str
    weights: Optional[Tensor]

    def __call__(self, updates: Tensor, ctx: Optional[RoundContext] = None) -> Tensor: ...


@runtime_checkable
class BatchedRule(Protocol):
    """Optional: a rule that also aggregates a replica batch (B, n, d) -> (B, d) when true."""

    batched: bool


@runtime_checkable
class LookaheadObserver(Protocol):
    """Optional: a stateful rule shown Romoa's lookahead uploads (Algorithm 2, lines 16–19)."""

    def observe(self, updates: Tensor, ctx: Optional[RoundContext] = None) -> None: ...


@runtime_checkable
class Resettable(Protocol):
    """Optional: a stateful rule that can forget every previous call."""

    def reset(self) -> None: ...


@runtime_checkable
class Attack(Protocol):
    """A poisoning attack: the m malicious deltas of a round from what it may know (ctx)."""

    name: str
    knowledge: str
    targets: Optional[tuple[Tensor, Tensor, Tensor]]

    def __call__(self, ctx: AttackContext) -> Tensor: ...


@runtime_checkable
class AttackHook(Protocol):
    """The attack seam of ``Federation.step(malicious=...)``: ``hook(ctx) -> Tensor (m, d)``."""

    def __call__(self, ctx: AttackContext) -> Tensor: ...


def accepts_attack_context(hook: Any) -> bool:
    """Whether ``hook`` can be called as ``hook(ctx)`` with one positional argument."""
    if not callable(hook):
        return False
    try:
        inspect.signature(hook).bind(None)
    except TypeError:
        return False
    except ValueError:                                   # no signature (some builtins)
        return True
    return True


__all__ = ["AggregationRule", "BatchedRule", "LookaheadObserver", "Resettable", "Attack",
           "AttackHook", "accepts_attack_context"]
