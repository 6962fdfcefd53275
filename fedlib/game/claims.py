"""Romoa §4's claims as checkable statements over a grid of (n, d), with the smallest
counterexample (C1–C5 of notebooks/romoa_theorem1_game.ipynb)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Optional, Sequence, Union

from .equilibria import dominant_actions, pure_nash_equilibria
from .games import Number, SymmetricGame, ceil_half, format_profile
from .repeated import repeated_game_spe
from .romoa_games import AdversaryGame, flg, gstar


# --------------------------------------------------------------------------- claims
@dataclass
class Counterexample:
    """Where a claim fails: the instance and a witnessing profile."""

    n: int
    d: int
    profile: Optional[tuple[int, ...]]
    reason: str
    k: Optional[int] = None

    def __str__(self) -> str:
        where = f"n={self.n}, d={self.d}" + (f", k={self.k}" if self.k is not None else "")
        prof = f" {format_profile(self.profile)}" if self.profile is not None else ""
        return f"{where}:{prof} {self.reason}"


GameFactory = Callable[[int, int], SymmetricGame]


class GameClaim:
    """A checkable statement about a family of games indexed by (n, d)."""

    text: str = ""
    game: GameFactory = None  # type: ignore[assignment]

    def check(self, n: int, d: int, game: Optional[GameFactory] = None) -> Optional[Counterexample]:
        """None if the claim holds at (n, d), else a counterexample."""
        raise NotImplementedError

    def _make(self, n: int, d: int, game: Optional[GameFactory]) -> SymmetricGame:
        factory = game or self.game
        if factory is None:
            raise ValueError("no game factory given")
        return factory(n, d)


def _resolve_level(level: Union[int, str], d: int) -> int:
    if level == "d":
        return d
    if isinstance(level, str):
        raise ValueError(f"level must be an int or 'd', got {level!r}")
    if not (0 <= level <= d):
        raise ValueError(f"level {level} outside 0..{d}")
    return int(level)


@dataclass
class UniqueNashClaim(GameClaim):
    """'The game has a unique pure NE, in which every player plays q_level' (level 'd' = q_d)."""

    level: Union[int, str]
    game: GameFactory
    text: str = ""
    require_strict: bool = False

    def check(self, n, d, game=None):
        G = self._make(n, d, game)
        lv = _resolve_level(self.level, d)
        eqs = pure_nash_equilibria(G)
        unanimous = tuple(n if a == lv else 0 for a in range(d + 1))
        target = next((e for e in eqs if e.counts == unanimous), None)
        others = [e for e in eqs if e is not target]
        if others:
            e = others[0]
            listed = ", ".join(str(x) for x in eqs[:6]) + (", …" if len(eqs) > 6 else "")
            return Counterexample(n, d, e.profile,
                                  f"is a {'strict' if e.strict else 'weak'} NE other than "
                                  f"all-q{lv} ({len(eqs)} NE classes: {listed})")
        if target is None:
            return Counterexample(n, d, (lv,) * n, "is not a NE (the game has no pure NE)")
        if self.require_strict and not target.strict:
            return Counterexample(n, d, target.profile, "is the unique NE but only weak")
        return None


@dataclass
class DominantActionClaim(GameClaim):
    """'q_level is a (strictly / weakly) dominant action for every player'."""

    level: Union[int, str]
    game: GameFactory
    text: str = ""
    kind: str = "strict"

    def check(self, n, d, game=None):
        G = self._make(n, d, game)
        lv = _resolve_level(self.level, d)
        dom = dominant_actions(G)
        ok = lv in (dom.strict if self.kind == "strict" else dom.strict + dom.weak)
        if ok:
            return None
        return Counterexample(n, d, None, f"q{lv} is not {self.kind}ly dominant "
                              f"(strict: {list(dom.strict)}, weak: {list(dom.weak)})")


@dataclass
class UtilityClaim(GameClaim):
    """'u(profile(n, d)) equals expected(n, d)' (exact), e.g. Romoa §4.1's worked utilities."""

    profile: Callable[[int, int], Sequence[int]]
    expected: Callable[[int, int], Sequence[Number]]
    game: GameFactory
    text: str = ""

    def check(self, n, d, game=None):
        G = self._make(n, d, game)
        prof = tuple(self.profile(n, d))
        got = G.utilities(prof)
        want = tuple(self.expected(n, d))
        if all(abs(Fraction(a) - Fraction(b)) <= G.tol for a, b in zip(got, want)):
            return None
        return Counterexample(n, d, prof, f"utilities {[str(x) for x in got]} ≠ claimed "
                                          f"{[str(x) for x in want]}")


@dataclass
class AdversaryClaim(GameClaim):
    """Theorem 1 made checkable: for every k with 1 ≤ k ≤ k_max(n) (default ⌈n/2⌉ − 1), the
    k-adversary game (``AdversaryGame``: n−k honest players fixed at q_0) has a pure NE and in
    every pure NE all adversaries play q_0 (with ``require_strict``: all-q_0 is moreover strict,
    i.e. every adversary strictly prefers honesty)."""

    game: GameFactory
    text: str = ""
    k_max: Callable[[int], int] = lambda n: ceil_half(n) - 1
    require_strict: bool = False

    def check(self, n, d, game=None):
        base = self._make(n, d, game)
        for k in range(1, min(self.k_max(n), n) + 1):
            A = AdversaryGame(base, k)
            eqs = pure_nash_equilibria(A)
            if not eqs:
                return Counterexample(n, d, None, "the adversary game has no pure NE", k)
            bad = [e for e in eqs if any(e.profile)]
            if bad:
                e = bad[0]
                return Counterexample(n, d, A.full_profile(e.profile),
                                      f"is a {'strict' if e.strict else 'weak'} NE in which an "
                                      "adversary attacks", k)
            if self.require_strict and not all(e.strict for e in eqs):
                return Counterexample(n, d, A.full_profile(eqs[0].profile),
                                      "is the NE but only weak: an adversary is indifferent "
                                      "to attacking", k)
        return None


@dataclass
class RepeatedOutcomeClaim(GameClaim):
    """'The T-fold repeated game's (pure) SPE outcome is all-q_level in every round'."""

    level: Union[int, str]
    game: GameFactory
    T: int = 3
    text: str = ""

    def check(self, n, d, game=None):
        G = self._make(n, d, game)
        lv = _resolve_level(self.level, d)
        r = repeated_game_spe(G, self.T)
        if r.case in ("unique", "unique-pure") and r.outcome[0] == (lv,) * n:
            return None
        alt = next((e.profile for e in r.stage_equilibria if e.profile != (lv,) * n), None)
        paths = r.n_spe_paths if r.n_spe_paths is not None else "many"
        return Counterexample(n, d, alt, f"is a stage NE; playing it in all T={self.T} rounds is "
                                         f"one of {paths} pure SPE paths (case '{r.case}')")


@dataclass
class ClaimResult:
    """Verdict of ``check_claim`` with the smallest counterexample (grid order: n, then d)."""

    claim: GameClaim
    verdict: str
    counterexample: Optional[Counterexample]
    n_checked: int
    n_failed: int
    failures: list[Counterexample] = field(default_factory=list)
    game_name: str = ""
    """The game checked, as named at the smallest grid point."""

    @property
    def holds(self) -> bool:
        return self.verdict == "verified"

    def __str__(self) -> str:
        head = f"{self.verdict.upper()}: {self.claim.text or type(self.claim).__name__}"
        if self.counterexample is None:
            return f"{head} [{self.n_checked} instances]"
        return (f"{head} [{self.n_failed}/{self.n_checked} instances fail; smallest: "
                f"{self.counterexample}]")


def _grid(grid) -> list[tuple[int, int]]:
    pts = sorted({(int(n), int(d)) for n, d in grid})
    if not pts:
        raise ValueError("empty grid")
    for n, d in pts:
        if n < 1 or d < 1:
            raise ValueError(f"grid points need n >= 1 and d >= 1, got {(n, d)}")
    return pts


def _claims() -> dict[str, GameClaim]:
    return {
        "G has a unique NE where all attack": UniqueNashClaim(
            "d", flg, "G (FLG, Eq. 12) has a unique NE, all players at q_d", require_strict=False),
        "G* has a unique NE where all are honest": UniqueNashClaim(
            0, gstar, "G* (Eqs. 13-14) has a unique NE, all players at q_0"),
        "holds for adversaries < ⌈n/2⌉": AdversaryClaim(
            gstar, "Theorem 1: with k < ⌈n/2⌉ adversaries, adversaries play q_0 in every NE of G*"),
    }


CLAIMS: dict[str, GameClaim] = _claims()
"""Romoa §4's three claims by their wording; aliases 'flg', 'gstar', 'theorem1'."""
CLAIMS.update({"flg": CLAIMS["G has a unique NE where all attack"],
               "gstar": CLAIMS["G* has a unique NE where all are honest"],
               "theorem1": CLAIMS["holds for adversaries < ⌈n/2⌉"]})


def check_claim(claim: Union[GameClaim, str], grid: Iterable[tuple[int, int]],
                game: Optional[GameFactory] = None) -> ClaimResult:
    """``claim`` checked on every (n, d) of ``grid``: verified, or refuted at the smallest point.

    ``game`` checks the claim on another game family than the claim's own.
    """
    if isinstance(claim, str):
        if claim not in CLAIMS:
            raise ValueError(f"unknown claim {claim!r}; known: {sorted(CLAIMS)}")
        claim = CLAIMS[claim]
    failures = []
    pts = _grid(grid)
    for n, d in pts:
        cx = claim.check(n, d, game)
        if cx is not None:
            failures.append(cx)
    label = claim._make(*pts[0], game).name
    return ClaimResult(claim, "refuted" if failures else "verified",
                       failures[0] if failures else None, len(pts), len(failures), failures, label)
