"""Pure Nash equilibria: exact enumeration over action counts for symmetric games, over
profiles otherwise; best responses, dominance and iterated strict dominance (Romoa §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from .games import (Game, Number, SymmetricGame, composition_rank, compositions,
                    format_profile)


# --------------------------------------------------------------------------- equilibria
@dataclass(frozen=True)
class Equilibrium:
    """A pure Nash equilibrium; for symmetric games one class (all orderings of ``counts``)."""

    profile: tuple[int, ...]
    """A representative profile (for symmetric games: levels in ascending order)."""
    strict: bool
    """Every player's action is its unique best response."""
    counts: Optional[tuple[int, ...]] = None
    """Action counts (symmetric games), else None."""
    multiplicity: int = 1
    """Number of profiles in the class (multinomial coefficient)."""

    def __str__(self) -> str:
        kind = "strict" if self.strict else "weak"
        extra = f" ×{self.multiplicity} orderings" if self.multiplicity > 1 else ""
        return f"{format_profile(self.profile)} [{kind}]{extra}"


def _lt_tol(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    return np.asarray(a < b - tol if tol else a < b, dtype=bool)


def _best_masks(T: np.ndarray, axis: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """isbest (≥ max − tol) and the number of best actions along ``axis``."""
    best = T.max(axis=axis, keepdims=True)
    isbest = ~_lt_tol(T, best, tol)
    return isbest, isbest.sum(axis=axis, keepdims=True)


def _multinomial(counts: Sequence[int]) -> int:
    out, left = 1, sum(counts)
    for c in counts:
        out *= math.comb(left, c)
        left -= c
    return out


def _symmetric_nash(game: SymmetricGame) -> list[Equilibrium]:
    """Count vector c is a NE iff every action a present in c is a best response to c − e_a.

    One payoff table over the others' count vectors o (compositions of n−1) gives the
    best-response pairs (o, b); each pair certifies action b inside c = o + e_b.  So c is a NE
    iff the number of certifying pairs landing on c equals the number of distinct actions in c
    (strict: counting only pairs where b is the unique best response).
    """
    n, m, tol = game.n, game.m, game.tol
    O = compositions(n - 1, m)
    T, _ = game.scaled_payoff_table(O)
    isbest, nbest = _best_masks(T, 1, tol)
    rows, acts = np.nonzero(isbest)
    Cp = O[rows]
    Cp[np.arange(len(rows)), acts] += 1
    ranks = composition_rank(Cp)
    size = math.comb(n + m - 1, m - 1)
    cnt = np.bincount(ranks, minlength=size)
    uniq = nbest[rows, 0] == 1
    cnt_strict = np.bincount(ranks[uniq], minlength=size)
    support = (Cp > 0).sum(axis=1)
    ne = cnt[ranks] == support
    out, seen = [], set()
    for j in np.nonzero(ne)[0]:
        r = int(ranks[j])
        if r in seen:
            continue
        seen.add(r)
        counts = tuple(int(c) for c in Cp[j])
        prof = tuple(a for a in range(m) for _ in range(counts[a]))
        out.append(Equilibrium(prof, bool(cnt_strict[r] == support[j]), counts,
                               _multinomial(counts)))
    return sorted(out, key=lambda e: e.profile)


def _general_nash(game: Game) -> list[Equilibrium]:
    U = game.payoff_array()
    ne = np.ones(game.n_actions, dtype=bool)
    strict = np.ones(game.n_actions, dtype=bool)
    for i in range(game.n_players):
        isbest, nbest = _best_masks(U[i], i, game.tol)
        ne &= isbest
        strict &= isbest & (nbest == 1)
    return [Equilibrium(tuple(int(a) for a in p), bool(strict[p])) for p in zip(*np.nonzero(ne))]


def pure_nash_equilibria(game: Game, method: str = "auto") -> list[Equilibrium]:
    """Every pure Nash equilibrium, strict (unique best responses) or weak, within ``game.tol``.

    method: "symmetric" (count vectors, SymmetricGame only), "table" (full payoff array,
    any game), "auto" (symmetric when possible).
    """
    if method not in ("auto", "symmetric", "table"):
        raise ValueError(f"unknown method {method!r}")
    if method == "symmetric" or (method == "auto" and isinstance(game, SymmetricGame)):
        if not isinstance(game, SymmetricGame):
            raise ValueError("method='symmetric' needs a SymmetricGame")
        return _symmetric_nash(game)
    return _general_nash(game)


def _distinct_orderings(counts: Sequence[int]):
    """All distinct profiles with the given action counts (multinomial many), lexicographic."""
    n = sum(counts)
    if n == 0:
        yield ()
        return
    left = list(counts)
    for a, c in enumerate(counts):
        if c:
            left[a] -= 1
            for rest in _distinct_orderings(left):
                yield (a,) + rest
            left[a] += 1


def equilibrium_profiles(eqs: Iterable[Equilibrium], limit: int = 1_000_000
                         ) -> dict[tuple[int, ...], bool]:
    """Equilibrium classes expanded into {profile: strict}, every ordering (≤ ``limit`` of them)."""
    eqs = list(eqs)
    total = sum(e.multiplicity for e in eqs)
    if total > limit:
        raise ValueError(f"{total} equilibrium profiles exceed limit={limit}; "
                         "work with the classes")
    out: dict[tuple[int, ...], bool] = {}
    for e in eqs:
        for p in (_distinct_orderings(e.counts) if e.counts is not None else [e.profile]):
            out[p] = e.strict
    return out


def best_responses(game: Game, i: int, profile: Sequence[int]) -> list[int]:
    """Player i's best responses to the others' actions in ``profile`` (within game.tol)."""
    prof = game._check_profile(i, profile)
    vals = []
    for b in range(game.n_actions[i]):
        dev = list(prof)
        dev[i] = b
        vals.append(game.utility(i, dev))
    top = max(vals)
    return [b for b, v in enumerate(vals) if not (v < top - game.tol if game.tol else v < top)]


def is_nash(game: Game, profile: Sequence[int]) -> tuple[bool, bool]:
    """(is a pure NE, is a strict NE) for ``profile``."""
    prof = game._check_profile(None, profile)
    ne, strict = True, True
    for i in range(game.n_players):
        br = best_responses(game, i, prof)
        ne &= prof[i] in br
        strict &= br == [prof[i]]
    return ne, ne and strict


def social_welfare(game: Game, profile: Sequence[int]) -> Number:
    """Σ_i u_i(a) (Romoa §4.1's 'total social welfare')."""
    return sum(game.utilities(profile))


@dataclass(frozen=True)
class Dominance:
    """Dominant actions of one player (Romoa §4.1's 'prefers').

    ``strict`` beats every other action against every opponent profile; ``weak`` is ≥
    everywhere and > somewhere against each other action.
    """

    strict: tuple[int, ...]
    weak: tuple[int, ...]


def _player_table(game: Game, i: int, actions: Optional[Sequence[Sequence[int]]] = None
                  ) -> np.ndarray:
    """Rows = opponent profiles (restricted to ``actions``), columns = player i's actions."""
    if isinstance(game, SymmetricGame):
        keep = list(range(game.m)) if actions is None else list(actions[0])
        Os = compositions(game.n - 1, len(keep))
        O = np.zeros((len(Os), game.m), dtype=np.int64)
        O[:, keep] = Os
        return game.scaled_payoff_table(O)[0]
    U = game.payoff_array()[i]
    if actions is not None:
        U = U[np.ix_(*[list(a) for a in actions])]
    return np.moveaxis(U, i, -1).reshape(-1, U.shape[i])


def _dominance_from_table(T: np.ndarray, tol: float) -> Dominance:
    m = T.shape[1]
    strict, weak = [], []
    for a in range(m):
        others = [b for b in range(m) if b != a]
        if all(_lt_tol(T[:, b], T[:, a], tol).all() for b in others):
            strict.append(a)
        if all((~_lt_tol(T[:, a], T[:, b], tol)).all() and _lt_tol(T[:, b], T[:, a], tol).any()
               for b in others):
            weak.append(a)
    return Dominance(tuple(strict), tuple(weak))


def dominant_actions(game: Game, i: int = 0) -> Dominance:
    """Player i's strictly and weakly dominant actions (symmetric games: same for every player)."""
    if not (0 <= i < game.n_players):
        raise ValueError(f"player index {i} outside 0..{game.n_players - 1}")
    return _dominance_from_table(_player_table(game, i), game.tol)


def iterated_strict_dominance(game: Game) -> list[tuple[int, ...]]:
    """Per player, the actions surviving iterated elimination of actions strictly dominated by
    a pure action."""
    alive = [list(range(m)) for m in game.n_actions]
    sym = isinstance(game, SymmetricGame)
    changed = True
    while changed:
        changed = False
        for i in range(1 if sym else game.n_players):
            T = _player_table(game, i, alive)
            if sym:  # the symmetric table has all m columns; keep the surviving ones
                T = T[:, alive[i]]
            cols = alive[i]
            drop = {cols[a] for a in range(len(cols)) for b in range(len(cols))
                    if a != b and _lt_tol(T[:, a], T[:, b], game.tol).all()}
            if drop:
                changed = True
                alive[i] = [a for a in cols if a not in drop]
                if sym:
                    alive = [alive[i]] * game.n_players
    return [tuple(a) for a in alive]
