"""The finitely repeated game (rFLG G₀ and G*₀, Romoa §4.2) solved by backward induction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .equilibria import Equilibrium, iterated_strict_dominance, pure_nash_equilibria
from .games import Game, SymmetricGame


# --------------------------------------------------------------------------- repeated game
@dataclass
class RepeatedGameResult:
    """Subgame-perfect outcomes of a stage game repeated T times (rFLG / G*_0, Romoa §4.2)."""

    T: int
    stage_equilibria: list[Equilibrium]
    case: str
    """'unique', 'unique-pure', 'payoff-equivalent', 'multiple' or 'none'."""
    result: str
    """The result relied on, in words."""
    n_spe_paths: Optional[int]
    """Number of pure SPE outcome paths when determined, else None."""
    outcome: Optional[list[tuple[int, ...]]]
    """The SPE path when unique (one stage profile per round), else None."""
    unique_certified: bool = False
    """Uniqueness of the stage NE holds among mixed equilibria too (iterated strict dominance)."""


def _payoff_equivalent(game: Game, eqs: list[Equilibrium]) -> bool:
    """Does every player get the same payoff in every pure NE (within game.tol)?"""
    if isinstance(game, SymmetricGame):
        # orderings permute players, so each class must pay every present action the same value v,
        # and v must be common to all classes
        vals = [game.payoff(a, tuple(c - (b == a) for b, c in enumerate(e.counts)))
                for e in eqs for a in range(game.m) if e.counts[a]]
        return all(abs(v - vals[0]) <= game.tol for v in vals)
    U = [game.utilities(e.profile) for e in eqs]
    return all(abs(u - r) <= game.tol for row in U for u, r in zip(row, U[0]))


def repeated_game_spe(game: Game, T: int) -> RepeatedGameResult:
    """Pure subgame-perfect outcomes of the T-times repeated game by backward induction (§4.2).

    If the stage game has a unique Nash equilibrium, the T-fold repetition has a unique
    subgame-perfect equilibrium playing it every round; if every stage equilibrium pays every
    player the same, the pure SPE paths are exactly the sequences of stage equilibria;
    otherwise non-equilibrium play can be sustained (Benoit & Krishna, 1985).
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    eqs = pure_nash_equilibria(game)
    n_profiles = sum(e.multiplicity for e in eqs)
    if n_profiles == 0:
        return RepeatedGameResult(T, eqs, "none",
                                  "The stage game has no pure NE, hence no pure SPE.", 0, None)
    if n_profiles == 1:
        survivors = iterated_strict_dominance(game)
        certified = all(len(s) == 1 for s in survivors)
        prof = eqs[0].profile
        res = ("Backward induction: a stage game with a unique NE has a unique SPE in the finitely "
               "repeated game, playing that NE after every history"
               + ("" if certified
                  else " (uniqueness shown among pure NE only; mixed NE not excluded)"))
        return RepeatedGameResult(T, eqs, "unique" if certified else "unique-pure", res, 1,
                                  [prof] * T, certified)
    if _payoff_equivalent(game, eqs):
        res = ("All stage NE give every player the same payoff, so continuation payoffs do not "
               "depend on history and backward induction leaves exactly the sequences of stage "
               "NE as pure SPE paths")
        return RepeatedGameResult(T, eqs, "payoff-equivalent", res, n_profiles ** T, None)
    res = ("Several payoff-distinct stage NE: every sequence of stage NE is an SPE path, and "
           "non-NE play may be sustained in early rounds (Benoit & Krishna 1985); backward "
           "induction does not determine the outcome")
    return RepeatedGameResult(T, eqs, "multiple", res, None, None)
