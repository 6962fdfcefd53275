"""Games in general (Romoa §4.1 vocabulary): poison levels, the ``Game`` interface, explicit
table games and symmetric games whose payoffs depend only on action counts."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Callable, Optional, Sequence, Union

import numpy as np

Number = Union[int, Fraction, float]

FLOAT_TOL = 1e-9
_MAX_ROWS = 30_000_000


# --------------------------------------------------------------------------- primitives
def _check_level(a: int, d: int) -> None:
    if d < 1:
        raise ValueError(f"d (maximal poison degree) must be >= 1, got {d}")
    if not (0 <= a <= d):
        raise ValueError(f"poison level must be in 0..{d}, got {a}")


def g(a: int, d: int) -> Fraction:
    """Information gain g(a) = 1 − |a|/d of poison level a (Romoa §4.1, Eq. 12)."""
    _check_level(a, d)
    return Fraction(d - a, d)


def h(a: int, d: int) -> Fraction:
    """Attack score h(a) = |a|/d of poison level a (Romoa §4.1, Eq. 12)."""
    _check_level(a, d)
    return Fraction(a, d)


def ceil_half(n: int) -> int:
    """⌈n/2⌉, Theorem 1's adversary bound (Romoa §2.2, Theorem 1)."""
    return -(-n // 2)


def format_profile(profile: Sequence[int], max_len: int = 8) -> str:
    """A profile of poison levels as '(q1, q0, q0)'; long ones run-length coded: '(q0×7, q3×2)'."""
    prof = [int(a) for a in profile]
    if len(prof) <= max_len:
        return "(" + ", ".join(f"q{a}" for a in prof) + ")"
    runs = [(a, len(list(grp))) for a, grp in itertools.groupby(prof)]
    return "(" + ", ".join(f"q{a}×{c}" if c > 1 else f"q{a}" for a, c in runs) + ")"


def _is_exact(x) -> bool:
    return isinstance(x, (int, Fraction, np.integer)) and not isinstance(x, bool)


def _number_array(values: Sequence[Number], shape) -> np.ndarray:
    """Exact values → object array (Fractions); any float → float64 array."""
    vals = list(values)
    if all(_is_exact(v) for v in vals):
        arr = np.empty(len(vals), dtype=object)
        arr[:] = [Fraction(v) for v in vals]
    else:
        arr = np.asarray([float(v) for v in vals], dtype=np.float64)
    return arr.reshape(shape)


# --------------------------------------------------------------------------- compositions
def compositions(total: int, parts: int) -> np.ndarray:
    """Every count vector c ≥ 0 with Σc = total: int64 (C(total+parts−1, parts−1), parts)."""
    if total < 0 or parts < 1:
        raise ValueError(f"need total >= 0 and parts >= 1, got total={total}, parts={parts}")
    size = math.comb(total + parts - 1, parts - 1)
    if size > _MAX_ROWS:
        raise ValueError(f"{size} count vectors (total={total}, parts={parts}) exceed the "
                         f"enumeration limit {_MAX_ROWS}")
    rows = np.zeros((1, 0), dtype=np.int64)
    rem = np.array([total], dtype=np.int64)
    for _ in range(parts - 1):
        reps = rem + 1
        src = np.repeat(np.arange(len(rem)), reps)
        starts = np.cumsum(reps) - reps
        vals = np.arange(int(reps.sum()), dtype=np.int64) - np.repeat(starts, reps)
        rows = np.column_stack([rows[src], vals])
        rem = rem[src] - vals
    return np.column_stack([rows, rem]).astype(np.int64)


def composition_rank(counts: np.ndarray) -> np.ndarray:
    """Rank of count vectors of one total onto 0..C(total+parts−1, parts−1)−1 (stars and bars).

    A bijection through the combinatorial number system.
    """
    counts = np.atleast_2d(np.asarray(counts, dtype=np.int64))
    parts = counts.shape[1]
    if parts == 1:
        return np.zeros(len(counts), dtype=np.int64)
    bars = np.cumsum(counts[:, :-1], axis=1) + np.arange(parts - 1)   # strictly increasing
    top = int(bars.max()) if bars.size else 0
    binom = np.zeros((top + 1, parts), dtype=np.int64)
    for p in range(top + 1):
        for r in range(1, parts):
            binom[p, r] = math.comb(p, r)
    return sum(binom[bars[:, j], j + 1] for j in range(parts - 1)).astype(np.int64)


# --------------------------------------------------------------------------- games
class Game:
    """A finite strategic game ⟨P, {A_i}, {u_i}⟩ (Romoa §4.1); actions 0..n_actions[i]−1."""

    n_players: int
    n_actions: tuple[int, ...]
    tol: float = 0.0
    name: str = "game"

    def utility(self, i: int, profile: Sequence[int]) -> Number:
        """u_i(a) for the action profile a."""
        raise NotImplementedError

    def _check_profile(self, i: Optional[int], profile: Sequence[int]) -> tuple[int, ...]:
        prof = tuple(int(a) for a in profile)
        if len(prof) != self.n_players:
            raise ValueError(f"profile has {len(prof)} actions, the game has "
                             f"{self.n_players} players")
        for j, (a, m) in enumerate(zip(prof, self.n_actions)):
            if not (0 <= a < m):
                raise ValueError(f"player {j} action {a} outside 0..{m - 1}")
        if i is not None and not (0 <= i < self.n_players):
            raise ValueError(f"player index {i} outside 0..{self.n_players - 1}")
        return prof

    def utilities(self, profile: Sequence[int]) -> tuple[Number, ...]:
        """(u_1(a), …, u_n(a))."""
        return tuple(self.utility(i, profile) for i in range(self.n_players))

    def payoff_array(self) -> np.ndarray:
        """All utilities as an array of shape (n, *n_actions) (object/Fraction or float)."""
        shape = self.n_actions
        vals = [self.utility(i, prof) for prof in itertools.product(*map(range, shape))
                for i in range(self.n_players)]
        arr = _number_array(vals, (int(np.prod(shape)), self.n_players))
        return np.moveaxis(arr.reshape(*shape, self.n_players), -1, 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, n={self.n_players}, actions={self.n_actions})"


class TableGame(Game):
    """A general (possibly asymmetric) game given by its payoff array u[i, a_1, …, a_n]."""

    def __init__(self, payoffs: np.ndarray, tol: Optional[float] = None, name: str = "table"):
        payoffs = np.asarray(payoffs)
        if payoffs.ndim < 2 or payoffs.shape[0] != payoffs.ndim - 1:
            raise ValueError(f"payoffs must have shape (n, m_1, …, m_n), got {payoffs.shape}")
        if any(m < 1 for m in payoffs.shape[1:]):
            raise ValueError("every player needs at least one action")
        if payoffs.dtype.kind == "f":
            if not np.isfinite(payoffs).all():
                raise ValueError("payoffs must be finite (NaN/Inf rejected)")
            self.tol = FLOAT_TOL if tol is None else float(tol)
        else:
            self.tol = 0.0 if tol is None else float(tol)
        self.payoffs = payoffs
        self.n_players = payoffs.shape[0]
        self.n_actions = tuple(payoffs.shape[1:])
        self.name = name

    def utility(self, i: int, profile: Sequence[int]) -> Number:
        """u_i(a) read from the payoff array."""
        prof = self._check_profile(i, profile)
        v = self.payoffs[(i,) + prof]
        return v.item() if isinstance(v, np.generic) else v

    def payoff_array(self) -> np.ndarray:
        """The stored payoff array."""
        return self.payoffs


def random_game(n_actions: Sequence[int], seed: int = 0, high: int = 4) -> TableGame:
    """A random asymmetric game with integer payoffs in 0..high−1 (ties included on purpose)."""
    rng = np.random.default_rng(seed)
    shape = (len(n_actions), *map(int, n_actions))
    return TableGame(rng.integers(0, high, size=shape).astype(np.int64),
                     name=f"random(seed={seed})")


class SymmetricGame(Game):
    """A symmetric game: u_i(a) = payoff(a_i, counts of the others' actions) (Romoa §4.1)."""

    def __init__(self, n: int, m: int, tol: float = 0.0, name: str = "symmetric"):
        if n < 1:
            raise ValueError(f"need at least one player, got n={n}")
        if m < 1:
            raise ValueError(f"need at least one action, got m={m}")
        self.n, self.m, self.tol, self.name = int(n), int(m), float(tol), name
        self.n_players = self.n
        self.n_actions = (self.m,) * self.n

    def payoff(self, own: int, others: Sequence[int]) -> Number:
        """Utility of a player at ``own`` when the other n−1 players' counts are ``others``."""
        raise NotImplementedError

    def _check_others(self, own: int, others: Sequence[int]) -> tuple[int, ...]:
        o = tuple(int(c) for c in others)
        if len(o) != self.m or min(o) < 0 or sum(o) != self.n - 1:
            raise ValueError(f"others must be {self.m} non-negative counts summing to "
                             f"{self.n - 1}, got {o}")
        if not (0 <= own < self.m):
            raise ValueError(f"action {own} outside 0..{self.m - 1}")
        return o

    def utility(self, i: int, profile: Sequence[int]) -> Number:
        """u_i(a) = payoff(a_i, counts of a_{−i})."""
        prof = self._check_profile(i, profile)
        others = np.bincount(np.delete(np.array(prof), i), minlength=self.m) if self.n > 1 \
            else np.zeros(self.m, dtype=np.int64)
        return self.payoff(prof[i], tuple(int(c) for c in others))

    def scaled_payoff_table(self, others: np.ndarray) -> tuple[np.ndarray, Number]:
        """(T, s) with T[r, a] = s · payoff(a, others[r]) for a constant s > 0."""
        vals = [self.payoff(a, tuple(int(c) for c in row)) for row in others for a in range(self.m)]
        return _number_array(vals, (len(others), self.m)), 1


class FunctionSymmetricGame(SymmetricGame):
    """A symmetric game from a function ``payoff_fn(own, others_counts) -> number``."""

    def __init__(self, n: int, m: int, payoff_fn: Callable[[int, tuple], Number],
                 tol: float = 0.0, name: str = "function"):
        super().__init__(n, m, tol, name)
        self._fn = payoff_fn

    def payoff(self, own: int, others: Sequence[int]) -> Number:
        """payoff_fn(own, others)."""
        return self._fn(own, self._check_others(own, others))


def random_symmetric_game(n: int, m: int, seed: int = 0, high: int = 3) -> FunctionSymmetricGame:
    """A random symmetric game: integer payoff in 0..high−1 per (own action, others' counts)."""
    rng = np.random.default_rng(seed)
    table = {(a, tuple(int(c) for c in row)): int(rng.integers(0, high))
             for row in compositions(n - 1, m) for a in range(m)}
    return FunctionSymmetricGame(n, m, lambda a, o: table[(a, o)],
                                 name=f"random_symmetric(seed={seed})")
