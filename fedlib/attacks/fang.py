"""Fang et al. (USENIX Security 2020) local model poisoning — Romoa's UPA (Romoa §2.2, Eq. 2).

Fang et al. maximise s^T(w − w') — the deviation of the global model from its no-attack
value w, against the direction s in which it would change — over the c compromised local
models, for a specific aggregation rule (Romoa Eq. 2 is the same objective).

* s (Fang's s_j): the sign of the global model's change under no attack. Full knowledge:
  estimated from the mean of the benign updates, s = sign(−mean Δ) (models change by −Δ);
  partial knowledge: from the attackers' own honest updates (:func:`change_direction`).
* **Krum attack** (Fang §4.1, full knowledge): w'_1 = w_Re − λ·s, i.e. the delta
  Δ'_1 = λ·s = −λ·sign(mean Δ), sent by all c attackers. λ starts at Fang's upper bound
  (:func:`krum_lambda_bound`) and is halved until Krum selects a crafted update or λ drops
  below the threshold 1e-5 (:func:`lmp_krum`).
* **Trimmed-mean/median attack** (Fang §4.2, "directed deviation", full knowledge): per
  coordinate j with benign extremes w_max,j / w_min,j, when s_j = −1 sample the c crafted
  values uniformly in [w_max,j, b·w_max,j] (w_max,j > 0) or [w_max,j, w_max,j/b] (otherwise);
  when s_j = 1 in [w_min,j/b, w_min,j] (w_min,j > 0) or [b·w_min,j, w_min,j] (otherwise);
  b = 2 (:func:`directed_deviation`). Partial knowledge (Fang §4.2): μ_j, σ_j of the
  attackers' honest models; values in [μ_j + 3σ_j, μ_j + 4σ_j] (s_j = −1) or
  [μ_j − 4σ_j, μ_j − 3σ_j] (s_j = 1) (:func:`deviation_partial`).

**Space of the trimmed-mean/median attack** (``space``). ``"update"`` (the default) applies
the b-scaled sampling to the updates, i.e. to the models' changes −Δ since θ_ref, as Fang's
and Cao's released code and most re-implementations do: the crafted update stays within a
factor b of the benign updates' extremes, so it is of the benign updates' magnitude.
``"model"`` is the literal reading of Fang et al., who aggregate *local models*: the sampling
acts on the parameters w = θ_ref − Δ, so "b·w_max" scales the whole parameter value, and the
crafted delta is of the order of (b − 1)·|θ_ref| — on small models hundreds of times the
benign update norm, a trivial outlier rather than a directed deviation. The two spaces
differ only by this magnitude (Krum's attack is translation-invariant and has no ``space``).
The L2A authors' versions of both attacks are broken (code-facts file); these are Fang's
definitions.

**Few attackers, few benign rows** (1 ≤ m ≤ w − 1 of w sampled uploads). With one attacker
the partial-knowledge σ cannot be estimated: σ = 0, so Fang's partial attack sends μ (the
attacker's honest update). With one benign row the full-knowledge extremes are that row's
values. Krum needs n − f − 2 ≥ 1 scored neighbours: where the (actual or surrogate) Krum on
the attack's rows cannot be evaluated (fewer than 3 rows, or the server's Krum rejects the
row count), λ stays at Fang's upper bound (no halving).

**UPA against rules it was not tailored to** (``variant="auto"``): Krum and Multi-Krum get the
Krum attack; every other rule (mean/FedAvg, trimmed mean, median, clipped median, RFA /
geometric median, Romoa, Bulyan, FLTrust, centered clipping) gets the trimmed-mean/median
attack — it needs only the benign coordinate extremes, not the rule, and is what L2A uses
against clipping median and geometric median (L2A appendix E.1).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..context import AttackContext
from .base import (Attack, Stealth, aggregator_name, aggregator_param, own_updates,
                   reference_updates, repeat_rows, uniform)

KRUM_RULES = ("krum", "multi_krum", "multikrum")
SPACES = ("model", "update")
KNOWLEDGE = ("full", "partial")


def _check_updates(updates: Tensor, what: str = "updates") -> None:
    if updates.dim() != 2 or updates.shape[0] == 0 or updates.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty (n, d) tensor, got {tuple(updates.shape)}")
    if not torch.isfinite(updates).all():
        raise ValueError(f"{what} contain NaN/Inf")


def change_direction(updates: Tensor) -> Tensor:
    """Fang's s: sign of the global model's change under no attack, sign(−mean Δ) (d,)."""
    _check_updates(updates)
    return torch.sign(-updates.mean(0))


def krum_update_scores(updates: Tensor, f: int) -> Tensor:
    """Krum score of each update (Blanchard et al. 2017): Σ of its n − f − 2 smallest ‖Δᵢ − Δⱼ‖².

    Validates the (n, d) updates and f; ``fedlib.aggregators.selection.krum_scores`` computes the
    same scores from a precomputed (..., n, n) distance matrix.
    """
    _check_updates(updates)
    n = updates.shape[0]
    k = n - f - 2
    if f < 0 or k < 1:
        raise ValueError(f"Krum needs n − f − 2 ≥ 1, got n = {n}, f = {f}")
    d2 = torch.cdist(updates, updates).pow(2)
    d2.fill_diagonal_(float("inf"))
    return d2.topk(k, dim=1, largest=False).values.sum(1)


def krum_select(updates: Tensor, f: int) -> int:
    """The index Krum selects (the lowest score; ties to the lowest index)."""
    return int(torch.argmin(krum_update_scores(updates, f)))


def krum_lambda_bound(benign: Tensor, num_clients: int, num_malicious: int) -> float:
    """Fang et al. §4.1 upper bound on λ for the Krum attack (distances D, not squared).

    λ ≤ 1/((m − 2c − 1)√d) · min_i Σ_{l ∈ Γ̃_i^{m−c−2}} D(w_l, w_i) + 1/√d · max_i D(w_i, w_Re),
    i over the benign models, Γ̃_i the m − c − 2 benign models closest to w_i, m clients,
    c attackers; D(w_i, w_Re) = ‖Δ_i‖. Where m − 2c − 1 < 1 (Krum's n > 2f + 2 violated) the
    denominator is clamped to 1.
    """
    _check_updates(benign, "benign updates")
    nb, d = benign.shape
    k = min(num_clients - num_malicious - 2, nb - 1)
    term1 = benign.new_zeros(())
    if k >= 1:
        dist = torch.cdist(benign, benign)
        dist.fill_diagonal_(float("inf"))
        nearest = dist.topk(k, dim=1, largest=False).values.sum(1)
        term1 = nearest.min() / (max(num_clients - 2 * num_malicious - 1, 1) * math.sqrt(d))
    term2 = benign.norm(dim=1).max() / math.sqrt(d)
    return float(term1 + term2)


def lmp_krum(benign: Tensor, num_malicious: int, num_clients: int,
             selects_crafted: Callable[[Tensor], bool], threshold: float = 1e-5,
             direction: Optional[Tensor] = None) -> tuple[Tensor, float]:
    """Fang §4.1 Krum attack: Δ' = λ·s for all c attackers, λ halved until Krum picks it.

    ``selects_crafted(U)`` is called on U = [c crafted rows; benign rows] and says whether the
    (actual or surrogate) Krum selects a crafted row. Returns the (c, d) rows and the final λ
    (the last λ tried when none below the threshold was selected).
    """
    _check_updates(benign, "benign updates")
    if num_malicious < 1:
        raise ValueError(f"need at least one attacker, got {num_malicious}")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    s = change_direction(benign) if direction is None else direction
    lam = krum_lambda_bound(benign, num_clients, num_malicious)
    lam = max(lam, threshold)
    while True:
        crafted = repeat_rows(lam * s, num_malicious)
        if selects_crafted(torch.cat([crafted, benign])) or lam / 2 < threshold:
            return crafted, lam
        lam /= 2


def directed_deviation(values: Tensor, push: Tensor, num_malicious: int, b: float,
                       generator: torch.Generator) -> Tensor:
    """Fang §4.2 full-knowledge trimmed-mean/median attack on per-coordinate values (c, d).

    ``push`` = −s (+1: push the coordinate up past the benign maximum, −1: down past the
    minimum, 0: keep the benign mean). Each crafted value is uniform in Fang's b-scaled
    interval next to the benign extreme.
    """
    _check_updates(values, "reference values")
    if not b > 1:
        raise ValueError(f"b must be > 1, got {b}")
    up = push > 0
    ext = torch.where(up, values.max(0).values, values.min(0).values)
    # push up: [e, b·e] if e > 0 else [e, e/b];  push down: [e/b, e] if e > 0 else [b·e, e]
    far = torch.where((ext > 0) == up, ext * b, ext / b)
    lo, hi = torch.minimum(ext, far), torch.maximum(ext, far)
    u = uniform((num_malicious, values.shape[1]), generator, values)
    crafted = lo + u * (hi - lo)
    return torch.where(push == 0, values.mean(0), crafted)


def deviation_partial(values: Tensor, push: Tensor, num_malicious: int,
                      generator: torch.Generator) -> Tensor:
    """Fang §4.2 partial knowledge: uniform in [μ + 3σ, μ + 4σ] (push up) or [μ − 4σ, μ − 3σ].

    One attacker (one row): σ = 0, so the crafted value is μ, its own honest value.
    """
    _check_updates(values, "attackers' values")
    mu = values.mean(0)
    sigma = values.std(0) if values.shape[0] >= 2 else torch.zeros_like(mu)
    u = uniform((num_malicious, values.shape[1]), generator, values)
    return mu + push * (3.0 + u) * sigma


class LMPKrum(Attack):
    """Fang et al. Krum attack (UPA tailored to Krum). Knowledge: full — the benign updates of
    this round and the aggregation rule (calls ``ctx.aggregator`` when it is Krum/Multi-Krum,
    otherwise a Krum surrogate with the aggregator's f, or f = m); partial — the attackers'
    honest updates stand in for the benign ones and a Krum surrogate is used.

    Params: ``threshold`` (1e-5), ``knowledge`` ("full"), ``f`` (override Krum's f), stealth.
    ``last_lambda`` holds the λ of the last call. Fallback: where Krum cannot be evaluated on
    the attack's rows (e.g. partial knowledge with one attacker: 2 rows), λ = Fang's bound.
    """

    name = "lmp_krum"
    knowledge = "full"

    def __init__(self, threshold: float = 1e-5, knowledge: str = "full", f: Optional[int] = None,
                 stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if knowledge not in KNOWLEDGE:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE}, got {knowledge!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.threshold, self.f = float(threshold), f
        self.knowledge = knowledge
        self.last_lambda: Optional[float] = None

    def _selector(self, ctx: AttackContext, n_rows: int) -> Callable[[Tensor], bool]:
        m = ctx.num_malicious
        agg = ctx.aggregator
        f = self.f if self.f is not None else aggregator_param(agg, "f", m)
        f = int(min(max(int(f), 0), max(n_rows - 3, 0)))

        def surrogate(U: Tensor) -> bool:
            return U.shape[0] < 3 or krum_select(U, f) < m     # < 3 rows: Krum undefined

        if (self.knowledge == "full" and self.f is None and ctx.benign_updates.shape[0] > 0
                and aggregator_name(agg) in KRUM_RULES):
            def actual(U: Tensor) -> bool:
                try:
                    out = agg(U, None)
                except ValueError:          # the server's Krum rejects this many rows
                    return surrogate(U)
                w = getattr(agg, "weights", None)
                if w is not None:
                    return bool((torch.as_tensor(w)[:m] > 0).any())
                return bool(torch.allclose(out, U[0]))
            return actual
        return surrogate

    def craft(self, ctx: AttackContext) -> Tensor:
        """Δ' = λ·s for every attacker, λ from Fang's bound halved until Krum selects it."""
        m = ctx.num_malicious
        ref = reference_updates(ctx) if self.knowledge == "full" else own_updates(ctx)
        rows, lam = lmp_krum(ref, m, max(ctx.num_clients, m + ref.shape[0]),
                             self._selector(ctx, m + ref.shape[0]), self.threshold)
        self.last_lambda = lam
        return rows


class LMPTrimmedMean(Attack):
    """Fang et al. trimmed-mean/median attack (UPA tailored to trimmed mean and median).

    Knowledge: full — the benign updates of this round (their coordinate-wise extremes and
    mean direction; one benign row: its values are the extremes); partial — only the
    attackers' honest updates (μ ± 3..4σ; one attacker: σ = 0, so it sends μ, its honest
    update). Params: ``b`` (2), ``space`` ("update", default: b-scaling of the updates, as
    Fang's released code — crafted updates of the benign magnitude; "model": Fang's literal
    local-model parameters — crafted deltas of the order of (b − 1)·|θ|, see the module
    docstring), ``knowledge`` ("full"), stealth.
    """

    name = "lmp_trimmed_mean"
    knowledge = "full"

    def __init__(self, b: float = 2.0, space: str = "update", knowledge: str = "full",
                 stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if knowledge not in KNOWLEDGE:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE}, got {knowledge!r}")
        if not b > 1:
            raise ValueError(f"b must be > 1, got {b}")
        self.b, self.space, self.knowledge = float(b), space, knowledge

    def craft(self, ctx: AttackContext) -> Tensor:
        """Per-coordinate values just beyond the benign extremes, against Fang's s."""
        m = ctx.num_malicious
        ref = reference_updates(ctx) if self.knowledge == "full" else own_updates(ctx)
        push = -change_direction(ref)                       # −s: against the benign change
        origin = ctx.theta.unsqueeze(0) if self.space == "model" else 0.0
        values = origin - ref                                # models w_i or changes −Δ_i
        if self.knowledge == "full":
            crafted = directed_deviation(values, push, m, self.b, ctx.generator)
        else:
            crafted = deviation_partial(values, push, m, ctx.generator)
        return origin - crafted


class UPA(Attack):
    """Romoa's UPA = Fang et al.'s attack for the server's rule (full knowledge by default).

    ``variant``: "auto" (Krum/Multi-Krum → Krum attack; every other rule, incl. mean, RFA and
    Romoa → trimmed-mean/median attack), "krum" or "trimmed_mean". Other params are passed to
    :class:`LMPKrum` (``threshold``, ``f``) and :class:`LMPTrimmedMean` (``b``, ``space``:
    "update" by default, "model" the literal reading); ``knowledge`` and the stealth factor to
    both. Every fallback of the two (one attacker, one benign row) applies.
    """

    name = "upa"
    knowledge = "full"
    VARIANTS = ("auto", "krum", "trimmed_mean")

    def __init__(self, variant: str = "auto", b: float = 2.0, space: str = "update",
                 threshold: float = 1e-5, f: Optional[int] = None, knowledge: str = "full",
                 stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {self.VARIANTS}, got {variant!r}")
        if knowledge not in KNOWLEDGE:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE}, got {knowledge!r}")
        self.variant, self.knowledge = variant, knowledge
        self._krum = LMPKrum(threshold=threshold, knowledge=knowledge, f=f)
        self._trim = LMPTrimmedMean(b=b, space=space, knowledge=knowledge)
        self.last_variant: Optional[str] = None

    def variant_for(self, aggregator) -> str:
        """The Fang variant used against ``aggregator`` (see the module docstring)."""
        if self.variant != "auto":
            return self.variant
        return "krum" if aggregator_name(aggregator) in KRUM_RULES else "trimmed_mean"

    def craft(self, ctx: AttackContext) -> Tensor:
        """Fang's attack of the chosen variant."""
        self.last_variant = self.variant_for(ctx.aggregator)
        return (self._krum if self.last_variant == "krum" else self._trim).craft(ctx)
