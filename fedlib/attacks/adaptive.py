"""An adaptive attack on the server's actual rule: a γ-search that queries the aggregator.

Fang et al. (USENIX Sec'20) tailor their attack to Krum by asking the real Krum whether it
would select the crafted update (λ halving, :func:`fedlib.attacks.lmp_krum`). Against Romoa
(Mao et al., ESORICS 2021) nothing comparable existed, so "Romoa vs Krum" compared a rule
facing a generic attack with one facing an attack tailored to it. :class:`RuleSearch` is the
tailored attack for any rule, Romoa included:

* direction — Shejwalkar & Houmansadr's (NDSS'21) perturbation ∇_p of the benign mean μ
  (``deviation`` "unit_vec" −μ/‖μ‖, "std" −σ, "sign" −sign(μ)), normalised to unit length p̂;
* candidates — the shared upload c(γ) = μ + γ·p̂ for γ ∈ {0} ∪ {ρ·2^j : j = −J..J}, ρ the
  largest benign upload norm (so the grid is in the units of the uploads);
* objective — Fang's directed deviation in delta terms, p̂ᵀ Aggr(uploads(γ)): how far the
  aggregate the server would compute *now* moves along the attack direction. For Romoa this
  is Algorithm 2 lines 16–21 on a copy of the sanitizing factors
  (:meth:`fedlib.romoa.Romoa.preview`): the greedy attacker also games the factors that its
  lookahead uploads build up. Other stateful rules are queried on a deep copy; the server's
  state is never changed.

Against rules the attackers cannot evaluate without the server's private side information
(FLTrust's root set, weighted FedAvg's client weights) the objective is computed on the plain
mean instead: the search degrades to a Min-Max-like deviation (use ``fltrust_adaptive`` for
the attack tailored to FLTrust).

Knowledge: full (the benign uploads of the round and the aggregator). The rows handed to the
aggregator are the m malicious uploads first, then the benign ones — the order of
:mod:`fedlib.romoa_settings` (participants 0..m−1 are the adversaries); a rule whose state
is tied to row positions (Romoa's F) must be attacked with that order.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from ..context import AttackContext, RoundContext
from .base import Attack, Stealth, reference_updates, repeat_rows
from .minmax import DEVIATIONS, perturbation


def candidate_gammas(scale: float, half_width: int) -> list[float]:
    """The γ grid {ρ·2^j : j = J..−J} (largest first) followed by 0, ρ = ``scale``."""
    if not scale > 0:
        return [0.0]
    return [scale * 2.0 ** j for j in range(half_width, -half_width - 1, -1)] + [0.0]


def directed_aggregate_deviation(aggregate: Tensor, direction: Tensor) -> float:
    """Fang et al.'s directed deviation in delta terms: p̂ᵀ Aggr (larger = more harm)."""
    return float(torch.dot(aggregate.double(), direction.double()))


def query_rule(aggregator: Any, updates: Tensor, ctx: RoundContext) -> Tensor:
    """The aggregate ``aggregator`` would return for ``updates``, leaving its state as it was.

    A rule that needs side information the attackers do not hold — FLTrust's root-set update,
    weighted FedAvg's client ids — cannot be queried (it raises ValueError); the search then
    scores candidates by the plain mean of the uploads instead (a surrogate, see
    :class:`RuleSearch`)."""
    try:
        return _query(aggregator, updates, ctx)
    except ValueError:
        if getattr(aggregator, "needs_server_update", False) or \
                getattr(aggregator, "name", "") == "weighted_mean":
            return updates.mean(0)
        raise


def _query(aggregator: Any, updates: Tensor, ctx: RoundContext) -> Tensor:
    preview = getattr(aggregator, "preview", None)
    if callable(preview):
        return preview(updates, ctx)[0]
    return copy.deepcopy(aggregator)(updates, ctx)


class RuleSearch(Attack):
    """γ-search against the server's actual rule (adaptive; see the module docstring).

    Params: ``deviation`` ("unit_vec", "std", "sign"), ``half_width`` J (3: 2J + 2
    candidates), stealth. ``last_gamma`` and ``last_objective`` hold the chosen γ and its
    directed deviation.
    """

    name = "rule_search"
    knowledge = "full"

    def __init__(self, deviation: str = "unit_vec", half_width: int = 3,
                 stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if deviation not in DEVIATIONS:
            raise ValueError(f"deviation must be one of {DEVIATIONS}, got {deviation!r}")
        if isinstance(half_width, bool) or not isinstance(half_width, int) or half_width < 0:
            raise ValueError(f"half_width must be an integer ≥ 0, got {half_width!r}")
        self.deviation, self.half_width = deviation, half_width
        self.last_gamma: float | None = None
        self.last_objective: float | None = None

    def craft(self, ctx: AttackContext) -> Tensor:
        """μ + γ·p̂ with the γ of the grid that maximises p̂ᵀ Aggr (first maximum, largest γ)."""
        if ctx.aggregator is None:
            raise ValueError("rule_search needs the server's aggregator (full knowledge)")
        benign = reference_updates(ctx)
        mu = benign.mean(0)
        kind = self.deviation if (self.deviation != "std" or benign.shape[0] > 1) else "unit_vec"
        p = perturbation(benign, kind)
        norm = p.norm()
        if not bool(norm > 0):
            self.last_gamma, self.last_objective = 0.0, 0.0
            return repeat_rows(mu, ctx.num_malicious)
        p = p / norm
        scale = float(benign.norm(dim=1).max())
        rctx = RoundContext(round=ctx.round, theta=ctx.theta, spec=ctx.spec, lr=ctx.lr)
        m = ctx.num_malicious
        best, best_gamma, best_obj = None, 0.0, -float("inf")
        for gamma in candidate_gammas(scale, self.half_width):
            upload = mu + gamma * p
            updates = torch.cat([repeat_rows(upload, m), ctx.benign_updates])
            obj = directed_aggregate_deviation(query_rule(ctx.aggregator, updates, rctx), p)
            if obj > best_obj:
                best, best_gamma, best_obj = upload, gamma, obj
        self.last_gamma, self.last_objective = best_gamma, best_obj
        return repeat_rows(best, m)
