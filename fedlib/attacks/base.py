"""What every attack shares: Romoa's stealth factor, the knowledge rules and small helpers.

An attack object is called once per round with an :class:`~fedlib.context.AttackContext` and
returns the (m, d) *deltas* the m sampled malicious clients upload (Δ = θ_ref − θ_malicious;
the server sets θ ← θ_ref − Aggr(Δ)). Subclasses implement :meth:`Attack.craft`, which
returns the poison deltas Δ_poison; :meth:`Attack.__call__` then applies the stealth factor.

**Stealth factor (Romoa §2.2).** Romoa defines the adversary's goal in iteration t as
A_t = θ_{t−1}^a − α_t(θ_{t−1}^a − O_t), α_t ∈ [0, 1], where O_t is the poisoned model the
attack objective produces. Reading θ_{t−1}^a as the attacker's *honest next state*
θ_h = θ_ref − Δ_honest and O_t = θ_ref − Δ_poison, the upload in delta terms is

    A = θ_ref − A_t = (1 − α)·Δ_honest + α·Δ_poison        (:func:`stealth_mix`)

so α = 0 reproduces the honest update exactly (no attack this round) and α = 1 is full
replacement by the poison. ``stealth_base="reference"`` is the other, literal reading
(θ_{t−1}^a = the model the attacker received, θ_ref): A = α·Δ_poison, so α = 0 sends a zero
update. α may be a float, a list of floats indexed by round (the last value is held; JSON
friendly, so run configs stay cacheable) or a callable ``round -> α``.

**Knowledge.** Full-knowledge attacks (Fang et al.'s full knowledge, IPM, Min-Max/Min-Sum,
FLTrust-adaptive) read ``ctx.benign_updates`` and may call ``ctx.aggregator``;
partial-knowledge ones read only ``ctx.honest_updates`` and ``ctx.data``. When no benign
client was sampled this round (possible with subsampling), full-knowledge attacks fall back
to the attackers' honest updates (:func:`reference_updates`).

**NaN/Inf policy** (the same for every attack, mirroring the rules'): benign rows holding
any NaN/±Inf are *dropped* before the attack reads them, with one ``RuntimeWarning``
("excluded k of n benign updates"), exactly as the aggregation rules exclude them — the
attack then knows only the finite benign rows (none left: :func:`reference_updates` falls
back to the attackers' own finite updates). Non-finite rows of the attackers' own
``honest_updates`` (a diverged local training) are likewise left out of what the attack
knows (``RuntimeWarning``; estimates use :func:`own_updates`), while the attack still crafts
all m uploads. An attack never emits a non-finite row: if the crafted uploads would hold
NaN/Inf (e.g. an overflowing boost, or sign flipping / stealth-mixing a NaN honest update),
``ValueError`` names the attack instead. At α = 0 (no attack this round) the honest rows
are returned as they are, NaN included, for the rule's own policy. The pure helper
functions (``directed_deviation``, ``gamma_search``, ...) take finite input only and raise
``ValueError`` otherwise (:func:`drop_nonfinite_benign`, :func:`check_finite_output`).

**Randomness** comes only from ``ctx.generator`` (plus dropout inside local training, which
follows the engine's per-round ``torch.manual_seed``), so runs are deterministic.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Sequence, Union

import torch
from torch import Tensor

from ..context import AttackContext

Stealth = Union[float, int, Sequence[float], Callable[[int], float]]

STEALTH_BASES = ("honest", "reference")


def stealth_mix(honest: Tensor, poison: Tensor, alpha: float, base: str = "honest") -> Tensor:
    """Romoa §2.2 stealth factor in delta terms: A = (1 − α)Δ_honest + αΔ_poison."""
    if base not in STEALTH_BASES:
        raise ValueError(f"stealth_base must be one of {STEALTH_BASES}, got {base!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"stealth factor α must be in [0, 1], got {alpha}")
    if honest.shape != poison.shape:
        raise ValueError(f"honest {tuple(honest.shape)} and poison {tuple(poison.shape)} differ")
    if base == "reference":
        return poison * alpha if alpha != 1.0 else poison.clone()
    if alpha == 0.0:
        return honest.clone()
    if alpha == 1.0:
        return poison.clone()
    return torch.lerp(honest, poison.to(honest.dtype), alpha)


def stealth_at(stealth: Stealth, t: int) -> float:
    """α_t of a stealth schedule: a float, a per-round list (last value held) or a callable."""
    if callable(stealth):
        a = float(stealth(t))
    elif isinstance(stealth, (list, tuple)):
        if len(stealth) == 0:
            raise ValueError("a stealth schedule list must not be empty")
        a = float(stealth[min(t, len(stealth) - 1)])
    else:
        a = float(stealth)
    if not (math.isfinite(a) and 0.0 <= a <= 1.0):
        raise ValueError(f"stealth factor α_{t} must be in [0, 1], got {a}")
    return a


def check_stealth(stealth: Stealth) -> None:
    """Validate a stealth schedule eagerly where possible (callables are checked per round)."""
    if callable(stealth):
        return
    if isinstance(stealth, (list, tuple)):
        if len(stealth) == 0:
            raise ValueError("a stealth schedule list must not be empty")
        for t in range(len(stealth)):
            stealth_at(stealth, t)
        return
    stealth_at(stealth, 0)


def reference_updates(ctx: AttackContext) -> Tensor:
    """The benign updates (full knowledge), or the attackers' finite honest ones if none."""
    b = ctx.benign_updates
    return b if b.shape[0] > 0 else own_updates(ctx)


def finite_row_mask(rows: Tensor) -> Tensor:
    """(n,) bool: rows whose entries are all finite (the rules' exclusion test)."""
    return torch.isfinite(rows).all(dim=1) if rows.dim() == 2 else torch.isfinite(rows).all()


def own_updates(ctx: AttackContext) -> Tensor:
    """The attackers' finite honest updates (partial knowledge); ValueError if none is finite."""
    honest = ctx.honest_updates
    ok = finite_row_mask(honest)
    if bool(ok.all()):
        return honest
    if not bool(ok.any()):
        raise ValueError(f"all {honest.shape[0]} of the attackers' honest updates contain "
                         "NaN/Inf (their local training diverged): nothing to estimate from")
    return honest[ok]


def drop_nonfinite_benign(ctx: AttackContext, name: str = "attack") -> AttackContext:
    """The attacks' NaN/Inf policy on input: non-finite benign rows dropped, honest ones flagged."""
    honest, benign = ctx.honest_updates, ctx.benign_updates
    bad = int((~finite_row_mask(honest)).sum())
    if bad:
        warnings.warn(f"{name}: {bad} of the attackers' {honest.shape[0]} honest updates "
                      "contain NaN/Inf (diverged local training); the attack ignores them",
                      RuntimeWarning, stacklevel=3)
    if benign.dim() != 2 or benign.shape[0] == 0:
        return ctx
    ok = finite_row_mask(benign)
    if bool(ok.all()):
        return ctx
    warnings.warn(f"{name}: excluded {int((~ok).sum())} of {benign.shape[0]} benign updates "
                  "containing NaN/Inf (as the aggregation rules do)", RuntimeWarning,
                  stacklevel=3)
    return dataclasses.replace(ctx, benign_updates=benign[ok])


def check_finite_output(rows: Tensor, name: str = "attack") -> Tensor:
    """The attacks' NaN/Inf policy on output: a crafted upload is never NaN/Inf (ValueError)."""
    if not bool(torch.isfinite(rows).all()):
        bad = int((~finite_row_mask(rows)).sum())
        raise ValueError(f"{name}: {bad} of the {rows.shape[0]} crafted uploads would contain "
                         "NaN/Inf (an overflowing scale or step?); refusing to emit them")
    return rows


def safe_norm(rows: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """‖x‖₂ without float under/overflow: max|x| · ‖x / max|x|‖ (0 for a zero row)."""
    scale = rows.abs().amax(dim=dim, keepdim=True)
    unit = rows / torch.where(scale > 0, scale, torch.ones_like(scale))
    out = scale * unit.norm(dim=dim, keepdim=True)
    return out if keepdim else out.squeeze(dim)


def aggregator_name(aggregator: Any) -> str:
    """The registry name of an aggregator object ("" when unknown), lower-cased."""
    if aggregator is None:
        return ""
    name = getattr(aggregator, "name", None)
    if not isinstance(name, str):
        name = type(aggregator).__name__
    return name.lower().replace("-", "_")


def aggregator_param(aggregator: Any, key: str, default: Any = None) -> Any:
    """An aggregator parameter (attribute, ``.params`` or ``.rule.params``), else ``default``."""
    val = getattr(aggregator, key, None)
    for holder in (aggregator, getattr(aggregator, "rule", None)):
        if val is not None:
            break
        params = getattr(holder, "params", None)
        if isinstance(params, dict):
            val = params.get(key)
    return default if val is None else val


def repeat_rows(row: Tensor, m: int) -> Tensor:
    """m colluding attackers sending the same crafted update (m, d)."""
    return row.reshape(1, -1).expand(m, -1).clone()


def uniform(shape: Sequence[int] | torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
    """U[0, 1) draws from the attack's own stream, on ``like``'s device and dtype."""
    return torch.rand(tuple(shape), generator=generator).to(device=like.device, dtype=like.dtype)


def normal(shape: Sequence[int] | torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
    """N(0, 1) draws from the attack's own stream, on ``like``'s device and dtype."""
    return torch.randn(tuple(shape), generator=generator).to(device=like.device, dtype=like.dtype)


class Attack:
    """Base class: ``craft(ctx) -> Δ_poison (m, d)``; ``__call__`` applies the stealth factor.

    Attributes: ``name`` (registry name), ``knowledge`` ("full" or "partial"),
    ``targets`` (None, or (x, y_true, y_poison) for targeted attacks, set in ``prepare``).
    """

    name = "attack"
    knowledge = "partial"

    def __init__(self, stealth: Stealth = 1.0, stealth_base: str = "honest"):
        check_stealth(stealth)
        if stealth_base not in STEALTH_BASES:
            raise ValueError(f"stealth_base must be one of {STEALTH_BASES}, got {stealth_base!r}")
        self.stealth = stealth
        self.stealth_base = stealth_base
        self.targets: tuple[Tensor, Tensor, Tensor] | None = None

    def craft(self, ctx: AttackContext) -> Tensor:
        """The poison deltas Δ_poison (m, d) before the stealth factor."""
        raise NotImplementedError

    def __call__(self, ctx: AttackContext) -> Tensor:
        """The uploads of the m malicious clients this round (Romoa §2.2 stealth applied).

        Applies the NaN/Inf policy of the module docstring before and after :meth:`craft`.
        """
        honest = ctx.honest_updates
        if honest.dim() != 2 or honest.shape[0] < 1:
            raise ValueError(f"need (m ≥ 1, d) honest updates, got {tuple(honest.shape)}")
        alpha = stealth_at(self.stealth, ctx.round)
        if alpha == 0.0 and self.stealth_base == "honest":
            return honest.clone()          # α = 0: no attack this round, nothing is crafted
        ctx = drop_nonfinite_benign(ctx, self.name)
        poison = self.craft(ctx)
        if tuple(poison.shape) != tuple(honest.shape):
            raise ValueError(f"{self.name}: crafted {tuple(poison.shape)}, expected "
                             f"{tuple(honest.shape)}")
        out = stealth_mix(honest, poison.to(honest.dtype), alpha, self.stealth_base)
        return check_finite_output(out, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, knowledge={self.knowledge!r})"
