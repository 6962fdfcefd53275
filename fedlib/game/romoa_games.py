"""Romoa's games: FLG (Eq. 12), the priced game G* (Eqs. 13–14) with its price rules and
sanitized attack weights (Eq. 11), and Theorem 1's k-adversary game."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Callable, Optional, Sequence

import numpy as np

from .games import (FLOAT_TOL, Number, SymmetricGame, TableGame, _is_exact, _number_array, g,
                    h)


# --------------------------------------------------------------------------- price rules
class PriceRule:
    """A price e_j that player P_j charges the evaluating player P_i (Romoa Eq. 14 and variants).

    ``__call__(own, other, counts, d)``: own = a_i, other = a_j, counts = action counts of the
    whole profile (only read when ``pairwise`` is False), d = maximal poison degree.
    """

    pairwise = True
    name = "price"

    def __init__(self, fn: Callable[[int, int, Optional[tuple], int], Number], name: str,
                 pairwise: bool = True, vector: Optional[Callable] = None):
        self._fn, self.name, self.pairwise = fn, name, pairwise
        self.vector = vector
        """Optional ``vector(own, counts[N, m], d) -> prices[N, m]`` (float): the fast table."""

    def __call__(self, own: int, other: int, counts: Optional[tuple], d: int) -> Number:
        return self._fn(own, other, counts, d)

    def __repr__(self) -> str:
        return f"PriceRule({self.name})"


def _eq14(own, other, counts, d):
    gi, gj = g(own, d), g(other, d)
    return Fraction(1) if gi >= gj else gi


uniform_price = PriceRule(lambda own, other, counts, d: Fraction(1), "uniform (Eq. 12)")
"""e_j ≡ 1: Eq. 13 reduces to FLG's Eq. 12."""

eq14_price = PriceRule(_eq14, "Eq. 14")
"""Eq. 14 as printed: e_j = 1 if g(a_i) ≥ g(a_j) else g(a_i) (the evaluating player i's view)."""


swapped_price = PriceRule(lambda own, other, counts, d: Fraction(1) if g(other, d) >= g(own, d)
                          else g(other, d), "Eq. 14, roles swapped")
"""The other reading of Eq. 14 (P_j's point of view): e_j = 1 if g(a_j) ≥ g(a_i) else g(a_j)."""


def power_price(p: Number) -> PriceRule:
    """Eq. 14 variant: e_j = 1 if g(a_i) ≥ g(a_j) else g(a_i)^p (p = 1 is Eq. 14)."""
    p = Fraction(p)

    def fn(own, other, counts, d):
        gi, gj = g(own, d), g(other, d)
        if gi >= gj:
            return Fraction(1)
        return gi ** int(p) if p.denominator == 1 else float(gi) ** float(p)
    return PriceRule(fn, f"power p={p}")


def scaled_price(lam: Number) -> PriceRule:
    """Eq. 14 variant: e_j = 1 if g(a_i) ≥ g(a_j) else λ·g(a_i)."""
    lam = Fraction(lam)
    return PriceRule(lambda own, other, counts, d: Fraction(1) if g(own, d) >= g(other, d)
                     else lam * g(own, d), f"scaled λ={lam}")


exclusion_price = PriceRule(lambda own, other, counts, d: Fraction(1) if g(own, d) >= g(other, d)
                            else Fraction(0), "exclusion (e_j = 0)")
"""Eq. 14 variant: a player more poisoned than P_j gets nothing from P_j (p → ∞)."""


def honesty_bonus_price(c: Number) -> PriceRule:
    """Eq. 14 variant: e_j = c when a_i = a_j = q_0 (agreeing honest players), Eq. 14 otherwise."""
    c = Fraction(c)
    return PriceRule(lambda own, other, counts, d: c if own == 0 and other == 0
                     else _eq14(own, other, counts, d), f"honesty bonus c={c}")


def _upper_median(counts: Sequence[int]) -> int:
    """Upper median level of a profile given by its counts (even n: the higher middle level)."""
    n = sum(counts)
    return int(np.searchsorted(np.cumsum(counts), n // 2, side="right"))


def sanitizing_factors(counts: Sequence[int], d: int, sharpness: float) -> np.ndarray:
    """Per-level stationary sanitizing factor (Romoa Eq. 11's fixed point).

    F(a) = e^{f(a)}/Σ_j e^{f(a_j)} with f(a) = −κ|a − m|/d, κ ≥ 0 the sharpness (ours; the paper
    prints none), where m is the upper median poison
    level (our stand-in for the mean-shift centroid of the majority cluster, Eqs. 8–10); the
    fixed point of F_t = β softmax(f) + (1−β) F_{t−1} for a
    stationary f is softmax(f).  Σ_levels counts·F = 1.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if sharpness < 0 or not np.isfinite(sharpness):
        raise ValueError(f"sharpness must be finite and >= 0, got {sharpness}")
    m = _upper_median([int(c) for c in counts])
    f = -float(sharpness) * np.abs(np.arange(d + 1) - m) / d
    w = np.exp(f)
    return w / float(counts @ w)


def _sanitizing_factors_rows(counts: np.ndarray, d: int, sharpness: float) -> np.ndarray:
    """Row-wise ``sanitizing_factors`` for count vectors counts[N, d+1] → F[N, d+1]."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts[0].sum())
    med = np.argmax(np.cumsum(counts, axis=1) > n // 2, axis=1)           # upper median level
    w = np.exp(-float(sharpness) * np.abs(np.arange(d + 1)[None, :] - med[:, None]) / d)
    return w / (counts * w).sum(axis=1, keepdims=True)


def sanitizing_price(sharpness: float) -> PriceRule:
    """Eq. 14 variant from Romoa's sanitizing factors (Eq. 11): e_j = n·F(a_j).

    That is the server's weight on P_j relative to 1/n, the same for every evaluator.
    """
    def fn(own, other, counts, d):
        return float(sum(counts) * sanitizing_factors(counts, d, sharpness)[other])

    def vec(own, counts, d):
        return counts.sum(axis=1, keepdims=True) * _sanitizing_factors_rows(counts, d, sharpness)
    return PriceRule(fn, f"sanitizing κ={sharpness}", pairwise=False, vector=vec)


class AttackWeight:
    """A factor w_i(a) multiplying the attack score h(a_i) in Eq. 13 (printed Eq. 13: w ≡ 1)."""

    def __init__(self, fn: Callable[[int, tuple, int], Number], name: str,
                 vector: Optional[Callable] = None):
        self._fn, self.name = fn, name
        self.vector = vector
        """Optional ``vector(own, counts[N, m], d) -> weights[N]`` (float): the fast table."""

    def __call__(self, own: int, counts: tuple, d: int) -> Number:
        return self._fn(own, counts, d)

    def __repr__(self) -> str:
        return f"AttackWeight({self.name})"


def sanitizing_weight(sharpness: float) -> AttackWeight:
    """Sanitized attack score h(a_i)·n·F(a_i) (Eq. 11's fixed point; Algorithm 2 line 21).

    n·F(a_i) is P_i's aggregation weight relative to 1/n.
    """
    def fn(own, counts, d):
        return float(sum(counts) * sanitizing_factors(counts, d, sharpness)[own])

    def vec(own, counts, d):
        return counts.sum(axis=1) * _sanitizing_factors_rows(counts, d, sharpness)[:, own]
    return AttackWeight(fn, f"sanitized h, κ={sharpness}", vector=vec)


# --------------------------------------------------------------------------- FLG and G*
class FLGame(SymmetricGame):
    """FLG G (Romoa §4.1): u_i(a) = (1/n) Σ_j g(a_j) + h(a_i) (Eq. 12), actions q_0..q_d.

    ``price``/``attack_weight`` generalise it to Eq. 13 (uniform price e ≡ 1 and w ≡ 1 give Eq. 12);
    ``RomoaGame`` is the same class with Eq. 14 as the default price.
    """

    def __init__(self, n: int, d: int, price: Optional[PriceRule] = None,
                 attack_weight: Optional[AttackWeight] = None, name: Optional[str] = None):
        if d < 1:
            raise ValueError(f"d (maximal poison degree) must be >= 1, got {d}")
        self.d = int(d)
        self.price = uniform_price if price is None else price
        self.attack_weight = attack_weight
        exact = self._probe_exact(n)
        super().__init__(n, d + 1, 0.0 if exact else FLOAT_TOL,
                         name or f"G(n={n}, d={d})")

    def _probe_exact(self, n: int) -> bool:
        if not self.price.pairwise or self.attack_weight is not None:
            return False
        return all(_is_exact(self.price(a, b, None, self.d))
                   for a in range(self.d + 1) for b in range(self.d + 1))

    # Eq. 13 split into its two parts; with e ≡ 1 and w ≡ 1 this is Eq. 12.
    def info_gain(self, own: int, others: Sequence[int]) -> Number:
        """Σ_j (e_j/n) g(a_j), Eq. 13's first term (Eq. 12's when e ≡ 1); own term e(a_i, a_i)."""
        o = self._check_others(own, others)
        counts = tuple(c + (k == own) for k, c in enumerate(o))
        d = self.d
        total = self.price(own, own, counts, d) * g(own, d)
        for b, c in enumerate(o):
            if c:
                total = total + c * self.price(own, b, counts, d) * g(b, d)
        return total / self.n if _is_exact(total) else float(total) / self.n

    def attack_term(self, own: int, others: Sequence[int]) -> Number:
        """w_i(a)·h(a_i) (Eq. 12/13's second term; w ≡ 1 as printed)."""
        o = self._check_others(own, others)
        if self.attack_weight is None:
            return h(own, self.d)
        counts = tuple(c + (k == own) for k, c in enumerate(o))
        return self.attack_weight(own, counts, self.d) * float(h(own, self.d))

    def payoff(self, own: int, others: Sequence[int]) -> Number:
        """u_i = info_gain + attack_term (Eq. 12 for FLG, Eq. 13 for G*)."""
        return self.info_gain(own, others) + self.attack_term(own, others)

    def scaled_payoff_table(self, others: np.ndarray) -> tuple[np.ndarray, Number]:
        """Exact int64 table n·L·u for exact pairwise prices (one matrix product), else a loop."""
        others = np.asarray(others, dtype=np.int64)
        if self.tol or not self.price.pairwise or self.attack_weight is not None:
            return self._float_table(others)
        d, m, n = self.d, self.m, self.n
        M = [[Fraction(self.price(a, b, None, d)) * g(b, d) for b in range(m)] for a in range(m)]
        H = [h(a, d) for a in range(m)]
        L = math.lcm(*[x.denominator for row in M for x in row], *[x.denominator for x in H])
        Mi = [[int(x * L) for x in row] for row in M]
        bound = (max(abs(x) for row in Mi for x in row) * (n + 1) + n * L) * 4
        if bound >= 2 ** 62:
            return super().scaled_payoff_table(others)
        Mi = np.array(Mi, dtype=np.int64)
        own = np.array([Mi[a, a] + n * int(H[a] * L) for a in range(m)], dtype=np.int64)
        return others @ Mi.T + own[None, :], n * L

    def _float_table(self, others: np.ndarray) -> tuple[np.ndarray, Number]:
        """Vectorised float table when the rules provide ``vector`` hooks, else the generic loop."""
        price, weight, d, m, n = self.price, self.attack_weight, self.d, self.m, self.n
        if not (price.pairwise or price.vector is not None) or \
                (weight is not None and weight.vector is None):
            return super().scaled_payoff_table(others)
        gv = np.array([float(g(b, d)) for b in range(m)])
        T = np.empty((len(others), m), dtype=np.float64)
        for a in range(m):
            counts = others.copy()
            counts[:, a] += 1
            if price.pairwise:
                row = np.array([float(price(a, b, None, d)) for b in range(m)])
                P = np.broadcast_to(row, others.shape)
            else:
                P = price.vector(a, counts, d)
            info = (P[:, a] * gv[a] + (others * P * gv[None, :]).sum(axis=1)) / n
            w = 1.0 if weight is None else weight.vector(a, counts, d)
            T[:, a] = info + w * float(h(a, d))
        return T, 1


class RomoaGame(FLGame):
    """Romoa's game G* (§4.2): u*_i(a) = Σ_j (e_j/n) g(a_j) + h(a_i) (Eq. 13), e_j from Eq. 14.

    Variants: ``price`` (another ``PriceRule``: power/scaled/exclusion/honesty bonus/
    sanitizing) and ``attack_weight`` (a sanitized attack score w_i·h(a_i); None = as printed).
    """

    def __init__(self, n: int, d: int, price: Optional[PriceRule] = None,
                 attack_weight: Optional[AttackWeight] = None, name: Optional[str] = None):
        price = eq14_price if price is None else price
        label = name or (f"G*(n={n}, d={d}, {price.name}"
                         + (f", {attack_weight.name}" if attack_weight is not None else "") + ")")
        super().__init__(n, d, price=price, attack_weight=attack_weight, name=label)


class AdversaryGame(SymmetricGame):
    """Theorem 1's game: k adversaries (q_0..q_d) among n players, the n−k honest ones at q_0.

    The base game is a symmetric game of n players. Players are the k adversaries only;
    adversary i's utility is the base game's u_i with the honest players' q_0 added to the
    others' counts.  (Equivalent to honest players with the
    full action set and utility without h whenever q_0 strictly dominates for them, as under
    Eq. 14 — see ``adversary_full_game``.)
    """

    def __init__(self, base: SymmetricGame, k: int):
        if not (1 <= k <= base.n):
            raise ValueError(f"number of adversaries k must be in 1..{base.n}, got {k}")
        self.base, self.k, self.honest = base, int(k), base.n - int(k)
        self.d = getattr(base, "d", base.m - 1)
        super().__init__(k, base.m, base.tol, f"{base.name} with k={k} adversaries")

    def _full(self, others: np.ndarray) -> np.ndarray:
        full = np.array(others, dtype=np.int64, copy=True)
        full[..., 0] += self.honest
        return full

    def payoff(self, own: int, others: Sequence[int]) -> Number:
        """Base payoff of an adversary at ``own``: the others' counts plus n−k honest q_0."""
        o = self._check_others(own, others)
        return self.base.payoff(own, tuple(int(c) for c in self._full(np.array(o))))

    def scaled_payoff_table(self, others: np.ndarray) -> tuple[np.ndarray, Number]:
        """The base game's table on the others' counts plus the honest players."""
        return self.base.scaled_payoff_table(self._full(np.asarray(others)))

    def full_profile(self, adversary_profile: Sequence[int]) -> tuple[int, ...]:
        """The n-player profile: adversaries' levels followed by n−k honest q_0."""
        return tuple(int(a) for a in adversary_profile) + (0,) * self.honest


def adversary_full_game(base: FLGame, k: int) -> TableGame:
    """Theorem 1, second model: all n players keep q_0..q_d, as an explicit table (brute force).

    Players 0..k−1 are adversaries (utility u_i); players k..n−1 are honest, with the utility
    without the attack score (``info_gain`` only).
    """
    if not (0 <= k <= base.n):
        raise ValueError(f"number of adversaries k must be in 0..{base.n}, got {k}")
    n, m = base.n, base.m
    vals = []
    for prof in itertools.product(range(m), repeat=n):
        for i in range(n):
            others = (np.bincount(np.delete(np.array(prof), i), minlength=m) if n > 1
                      else np.zeros(m, int))
            o = tuple(int(c) for c in others)
            vals.append(base.payoff(prof[i], o) if i < k else base.info_gain(prof[i], o))
    arr = _number_array(vals, (m ** n, n))
    arr = np.moveaxis(arr.reshape(*([m] * n), n), -1, 0)
    return TableGame(arr, tol=base.tol, name=f"{base.name} with {k} adversaries, honest without h")



def flg(n: int, d: int) -> FLGame:
    """Factory for FLG G(n, d) (Eq. 12)."""
    return FLGame(n, d)


def gstar(n: int, d: int) -> RomoaGame:
    """Factory for Romoa's G*(n, d) with Eq. 14 prices (Eq. 13)."""
    return RomoaGame(n, d)
