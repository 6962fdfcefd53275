"""Romoa §4 made executable: the federated learning game (FLG, Eq. 12), Romoa's priced game
G* (Eqs. 13–14), their finite repetitions, and a checker for the claims made about them.

Vocabulary (Romoa §4.1): n players, each picks a poison level ``q_0 … q_d``, encoded as the
integer ``a ∈ {0, …, d}`` (``|a|/d`` is the poison percentage). ``g(a) = 1 − a/d`` is the
information gain, ``h(a) = a/d`` the attack score.

Game objects
    ``Game`` is the general interface (``n_players``, ``n_actions``, ``utility(i, profile)``);
    ``TableGame`` holds an explicit payoff array (``random_game`` draws one).
    ``SymmetricGame`` is the fast path: a player's payoff depends only on its own action and
    the *counts* of the others' actions, ``payoff(own, others)``.  ``FLGame`` (Eq. 12),
    ``RomoaGame`` (Eqs. 13–14, with pluggable price rules and an optional sanitized attack
    score) and ``AdversaryGame`` (Theorem 1's k-adversary game) are symmetric games.

Arithmetic
    Built-in games are exact: utilities are ``fractions.Fraction`` and all weak/strict
    comparisons are exact (``game.tol == 0``).  Rules with transcendental values (the
    softmax sanitizing factor of Eq. 11) give floats and the game carries ``tol = 1e-9``:
    ``u ≥ u' − tol`` counts as "at least as good", ``u > u' + tol`` as "strictly better".

Equilibria
    ``pure_nash_equilibria`` enumerates count vectors (compositions of n into d+1 parts,
    C(n+d, d) of them) instead of the (d+1)^n profiles: one payoff table over the
    C(n−1+d, d) "others" count vectors gives every best-response set, and a count vector is an
    equilibrium iff each action present in it is a best response to the others' counts.  For
    the built-in pairwise-priced games the table is an exact int64 matrix product, which keeps
    e.g. n = 40, d = 5 (1.2 M classes) or n = 1000, d = 2 tractable on a CPU (timings:
    notebooks/romoa_theorem1_game.ipynb).

Repeated games (``repeated_game_spe``): we rely on backward induction for finitely repeated
games (e.g. Osborne & Rubinstein, *A Course in Game Theory*, 1994, ch. 8): if the stage game
has a unique Nash equilibrium, the T-fold repetition has a unique subgame-perfect
equilibrium, which plays it in every round; if every stage equilibrium gives every player the
same payoff, the pure SPE paths are exactly the sequences of stage equilibria; otherwise
(payoff-distinct multiple equilibria) non-equilibrium play can be sustained (Benoit &
Krishna, 1985) and backward induction does not pin the outcome down.

Modules
    :mod:`~fedlib.game.games` (primitives, ``Game``, table and symmetric games),
    :mod:`~fedlib.game.romoa_games` (FLG, G*, price rules, Theorem 1's adversary game),
    :mod:`~fedlib.game.equilibria`, :mod:`~fedlib.game.repeated`, :mod:`~fedlib.game.claims`
    (``GameClaim`` and its subclasses, ``check_claim``).
"""

from __future__ import annotations

from .claims import (CLAIMS, AdversaryClaim, ClaimResult, Counterexample, DominantActionClaim,
                     GameClaim, RepeatedOutcomeClaim, UniqueNashClaim, UtilityClaim, check_claim)
from .equilibria import (Dominance, Equilibrium, best_responses, dominant_actions,
                         equilibrium_profiles, is_nash, iterated_strict_dominance,
                         pure_nash_equilibria, social_welfare)
from .games import (FLOAT_TOL, FunctionSymmetricGame, Game, Number, SymmetricGame, TableGame,
                    ceil_half, composition_rank, compositions, format_profile, g, h, random_game,
                    random_symmetric_game)
from .repeated import RepeatedGameResult, repeated_game_spe
from .romoa_games import (AdversaryGame, AttackWeight, FLGame, PriceRule, RomoaGame,
                          adversary_full_game, eq14_price, exclusion_price, flg, gstar,
                          honesty_bonus_price, power_price, sanitizing_factors, sanitizing_price,
                          sanitizing_weight, scaled_price, swapped_price, uniform_price)

__all__ = [
    "g", "h", "Game", "TableGame", "SymmetricGame", "FunctionSymmetricGame", "FLGame",
    "RomoaGame", "AdversaryGame", "PriceRule", "AttackWeight", "uniform_price", "eq14_price",
    "swapped_price", "power_price", "scaled_price", "exclusion_price", "honesty_bonus_price",
    "sanitizing_price", "sanitizing_weight", "sanitizing_factors", "adversary_full_game",
    "random_game", "random_symmetric_game", "compositions", "composition_rank",
    "Equilibrium", "pure_nash_equilibria", "equilibrium_profiles", "is_nash",
    "best_responses", "Dominance", "dominant_actions", "iterated_strict_dominance",
    "social_welfare", "RepeatedGameResult", "repeated_game_spe", "Counterexample", "GameClaim",
    "UniqueNashClaim", "AdversaryClaim", "UtilityClaim", "DominantActionClaim",
    "RepeatedOutcomeClaim", "ClaimResult", "check_claim", "CLAIMS", "format_profile",
    "ceil_half", "flg", "gstar", "Number", "FLOAT_TOL",
]

