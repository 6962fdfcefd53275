"""Tests for fedlib.game: Romoa §4's games (Eqs. 12–14), the NE enumerator and the claim checker."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction as F

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedlib import game as gm
from fedlib.game import (AdversaryClaim, AdversaryGame, FLGame, PriceRule, RomoaGame, TableGame,
                         adversary_full_game, best_responses, ceil_half, check_claim,
                         composition_rank, compositions, dominant_actions, equilibrium_profiles,
                         honesty_bonus_price, is_nash, iterated_strict_dominance,
                         pure_nash_equilibria, random_game, random_symmetric_game,
                         repeated_game_spe, sanitizing_price, sanitizing_weight, social_welfare)

SMALL = [(n, d) for n in range(1, 5) for d in range(1, 4)]


# ----------------------------------------------------------------- literal references
def literal_flg(i, a, n, d):
    """Eq. 12 typed in directly: (1/n) Σ_j (1 − a_j/d) + a_i/d."""
    return sum(F(d - aj, d) for aj in a) / n + F(a[i], d)


def literal_gstar(i, a, n, d):
    """Eqs. 13–14 typed in directly, prices from player i's point of view."""
    gi = F(d - a[i], d)
    total = F(0)
    for aj in a:
        gj = F(d - aj, d)
        e = F(1) if gi >= gj else gi
        total += e / n * gj
    return total + F(a[i], d)


def naive_nash(game):
    """Naive brute force: every profile, every player, every deviation."""
    out = {}
    tol = game.tol
    for prof in itertools.product(*[range(m) for m in game.n_actions]):
        ne, strict = True, True
        for i in range(game.n_players):
            u = game.utility(i, prof)
            for b in range(game.n_actions[i]):
                if b == prof[i]:
                    continue
                dev = list(prof)
                dev[i] = b
                v = game.utility(i, dev)
                better = v > u + tol if tol else v > u         # exact when tol == 0
                as_good = v >= u - tol if tol else v >= u
                ne &= not better
                strict &= not as_good
        if ne:
            out[prof] = strict
    return out


# ----------------------------------------------------------------- utilities
def test_hand_checked_utilities_n3_d2():
    # profile (q0, q1, q2): g = (1, 1/2, 0), h = (0, 1/2, 1)
    assert FLGame(3, 2).utilities((0, 1, 2)) == (F(1, 2), F(1), F(3, 2))
    # G*: P0 pays no price (g=1 is best) → (1 + 1/2 + 0)/3; P1 gets g1·1 from P0, its own 1/2,
    # nothing from P2 → (1/2 + 1/2)/3 + 1/2; P2 (g=0) gets nothing from anyone → 0 + 1.
    assert RomoaGame(3, 2).utilities((0, 1, 2)) == (F(1, 2), F(5, 6), F(1))
    # Eq. 14 own-term: a lone q1 against two q2 in d=2: e=1 for everyone (g_i ≥ g_j)
    assert RomoaGame(3, 2).utility(0, (1, 2, 2)) == F(1, 2) / 3 + F(1, 2)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("d", [1, 3])
def test_paper_worked_numbers_section_4_1(n, d):
    G = FLGame(n, d)
    honest, attack = (0,) * n, (d,) * n
    assert G.utilities(honest) == (1,) * n and social_welfare(G, honest) == n
    lone = (d,) + (0,) * (n - 1)
    assert G.utility(0, lone) == 2 - F(1, n)
    assert all(G.utility(i, lone) == 1 - F(1, n) for i in range(1, n))
    assert G.utilities(attack) == (1,) * n and social_welfare(G, attack) == n


def test_flg_welfare_is_constant_n():
    for prof in itertools.product(range(3), repeat=3):
        assert social_welfare(FLGame(3, 2), prof) == 3


@pytest.mark.parametrize("n,d", SMALL)
def test_utilities_match_literal_equations(n, d):
    for prof in itertools.product(range(d + 1), repeat=n):
        for i in range(n):
            assert FLGame(n, d).utility(i, prof) == literal_flg(i, prof, n, d)
            assert RomoaGame(n, d).utility(i, prof) == literal_gstar(i, prof, n, d)


@pytest.mark.parametrize("game", [FLGame(5, 3), RomoaGame(4, 2),
                                  RomoaGame(3, 3, price=honesty_bonus_price(3)),
                                  RomoaGame(3, 2, price=gm.power_price(2))])
def test_scaled_table_is_exact_positive_multiple(game):
    O = compositions(game.n - 1, game.m)
    T, s = game.scaled_payoff_table(O)
    assert T.dtype == np.int64 and s > 0
    for row, trow in zip(O, T):
        for a in range(game.m):
            assert F(int(trow[a]), s) == game.payoff(a, tuple(row))


# ----------------------------------------------------------------- enumerator vs brute force
def _as_dict(eqs):
    return equilibrium_profiles(eqs)


@pytest.mark.parametrize("n,d", SMALL)
def test_enumerator_matches_brute_force_flg_gstar(n, d):
    for G in (FLGame(n, d), RomoaGame(n, d)):
        assert _as_dict(pure_nash_equilibria(G)) == naive_nash(G)
        assert _as_dict(pure_nash_equilibria(G, method="table")) == naive_nash(G)


@pytest.mark.parametrize("n,d", SMALL)
@pytest.mark.parametrize("seed", range(3))
def test_enumerator_matches_brute_force_random_games(n, d, seed):
    S = random_symmetric_game(n, d + 1, seed=seed)
    assert _as_dict(pure_nash_equilibria(S)) == naive_nash(S)
    rng = np.random.default_rng(seed)
    shape = [int(x) for x in rng.integers(1, d + 2, size=n)]
    R = random_game(shape, seed=seed, high=3)
    assert _as_dict(pure_nash_equilibria(R)) == naive_nash(R)


@pytest.mark.parametrize("n,d", [(2, 1), (3, 2), (4, 2), (4, 3)])
def test_enumerator_matches_brute_force_float_variants(n, d):
    for G in (RomoaGame(n, d, price=sanitizing_price(2.0)),
              RomoaGame(n, d, attack_weight=sanitizing_weight(3.0))):
        assert G.tol > 0
        assert _as_dict(pure_nash_equilibria(G)) == naive_nash(G)


@pytest.mark.parametrize("n,k,d", [(3, 1, 2), (4, 1, 3), (4, 2, 2), (5, 2, 1)])
def test_adversary_game_matches_brute_force_and_full_model(n, k, d):
    base = RomoaGame(n, d)
    A = AdversaryGame(base, k)
    adv = _as_dict(pure_nash_equilibria(A))
    assert adv == naive_nash(A)
    # second model: honest players keep all actions but have no attack score
    full = _as_dict(pure_nash_equilibria(adversary_full_game(base, k)))
    assert {p[:k]: s for p, s in full.items()} == adv
    assert all(p[k:] == (0,) * (n - k) for p in full)


def test_is_nash_and_best_responses_agree_with_enumerator():
    G = RomoaGame(3, 2)
    eqs = _as_dict(pure_nash_equilibria(G))
    for prof in itertools.product(range(3), repeat=3):
        ne, strict = is_nash(G, prof)
        assert ne == (prof in eqs) and (not ne or strict == eqs[prof])
    assert best_responses(G, 0, (0, 0, 0)) == [0, 1, 2]          # every level gives utility 1
    assert best_responses(FLGame(3, 2), 0, (0, 0, 0)) == [2]


# ----------------------------------------------------------------- structural facts
@pytest.mark.parametrize("n", [2, 3, 6, 9])
@pytest.mark.parametrize("d", [1, 2, 4])
def test_gstar_equilibria_are_all_uniform_profiles(n, d):
    eqs = pure_nash_equilibria(RomoaGame(n, d))
    assert [e.counts for e in eqs] == [tuple(n if a == lv else 0 for a in range(d + 1))
                                       for lv in range(d + 1)]
    assert [e.strict for e in eqs] == [False] * d + [True]
    flg = pure_nash_equilibria(FLGame(n, d))
    assert len(flg) == 1 and flg[0].profile == (d,) * n and flg[0].strict


def test_dominance():
    assert dominant_actions(FLGame(4, 3)).strict == (3,)
    dom = dominant_actions(RomoaGame(4, 3))
    assert dom.strict == () and dom.weak == (3,)            # q_d weakly dominant in G*
    assert iterated_strict_dominance(FLGame(3, 2)) == [(2,)] * 3
    assert iterated_strict_dominance(RomoaGame(3, 2)) == [(0, 1, 2)] * 3
    # a 2x2 prisoner's dilemma through the general path
    pd = TableGame(np.array([[[3, 0], [5, 1]], [[3, 5], [0, 1]]]))
    assert dominant_actions(pd, 0).strict == (1,) and dominant_actions(pd, 1).strict == (1,)
    assert iterated_strict_dominance(pd) == [(1,), (1,)]


def test_repeated_games():
    r = repeated_game_spe(FLGame(4, 2), T=5)
    assert r.case == "unique" and r.unique_certified and r.outcome == [(2,) * 4] * 5
    r = repeated_game_spe(RomoaGame(4, 2), T=3)
    assert r.case == "payoff-equivalent" and r.n_spe_paths == 3 ** 3 and r.outcome is None
    # coordination game with payoff-distinct equilibria
    coord = TableGame(np.array([[[2, 0], [0, 1]], [[2, 0], [0, 1]]]))
    assert repeated_game_spe(coord, 2).case == "multiple"
    mp = TableGame(np.array([[[1, -1], [-1, 1]], [[-1, 1], [1, -1]]]))   # matching pennies
    assert repeated_game_spe(mp, 2).case == "none"


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(1, 3), st.data())
def test_no_price_in_unit_interval_removes_all_attack_equilibrium(n, d, data):
    """Proposition (notebook §5): pairwise prices in [0, 1] keep all-q_d a strict NE (Eq. 13)."""
    vals = data.draw(st.lists(st.fractions(0, 1, max_denominator=6), min_size=(d + 1) ** 2,
                              max_size=(d + 1) ** 2))
    table = np.array(vals, dtype=object).reshape(d + 1, d + 1)
    rule = PriceRule(lambda own, other, counts, dd: table[own, other], "random")
    ne, strict = is_nash(RomoaGame(n, d, price=rule), (d,) * n)
    assert ne and strict


# ----------------------------------------------------------------- claims
GRID = [(n, d) for n in range(2, 7) for d in range(1, 4)]


def test_claim_flg_verified_and_n1_degenerate():
    assert check_claim("G has a unique NE where all attack", GRID).holds
    r = check_claim("flg", [(1, 1), (2, 1)])
    assert not r.holds and (r.counterexample.n, r.counterexample.d) == (1, 1)


def test_claim_gstar_refuted_smallest_counterexample():
    r = check_claim("G* has a unique NE where all are honest", GRID)
    assert r.verdict == "refuted" and r.n_failed == r.n_checked
    cx = r.counterexample
    assert (cx.n, cx.d, cx.profile) == (2, 1, (1, 1)) and "strict" in cx.reason


def test_claim_theorem1_refuted_smallest_counterexample():
    r = check_claim("holds for adversaries < ⌈n/2⌉", GRID)
    cx = r.counterexample
    assert r.verdict == "refuted" and (cx.n, cx.d, cx.k, cx.profile) == (3, 1, 1, (1, 0, 0))
    assert check_claim("theorem1", [(2, 1), (2, 3)]).holds      # ⌈2/2⌉ − 1 = 0 adversaries: vacuous


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_honesty_bonus_thresholds(n):
    """Theorem 1 holds iff c > n/(n − k + 1) at k = ⌈n/2⌉ − 1; G* unique all-q0 iff c > n."""
    thr = F(n, n - (ceil_half(n) - 1) + 1)
    grid = [(n, d) for d in (1, 2, 3)]

    def fam(c):
        return lambda nn, dd: RomoaGame(nn, dd, price=honesty_bonus_price(c))
    assert not check_claim("theorem1", grid, game=fam(thr)).holds
    assert check_claim("theorem1", grid, game=fam(thr + F(1, 100))).holds
    assert not check_claim("gstar", grid, game=fam(F(n))).holds
    assert check_claim("gstar", grid, game=fam(F(n) + F(1, 100))).holds


def test_sanitized_attack_score_bound_is_tight():
    fam = lambda n, d: RomoaGame(n, d, attack_weight=sanitizing_weight(8.0))  # noqa: E731
    grid = [(n, d) for n in range(2, 7) for d in (1, 2)]
    assert check_claim("theorem1", grid, game=fam).holds
    at_bound = AdversaryClaim(fam, "k = ⌈n/2⌉", k_max=ceil_half)
    assert not check_claim(at_bound, grid).holds


def test_utility_and_repeated_claims():
    c = gm.UtilityClaim(lambda n, d: (d,) + (0,) * (n - 1),
                        lambda n, d: (2 - F(1, n),) + (1 - F(1, n),) * (n - 1), gm.flg,
                        "lone attacker")
    assert check_claim(c, GRID).holds
    assert check_claim(gm.RepeatedOutcomeClaim("d", gm.flg, T=3), GRID).holds
    r = check_claim(gm.RepeatedOutcomeClaim(0, gm.gstar, T=3), GRID)
    assert not r.holds and r.counterexample.profile == (1, 1)
    assert check_claim(gm.DominantActionClaim("d", gm.flg), GRID).holds
    assert not check_claim(gm.DominantActionClaim("d", gm.gstar), GRID).holds
    assert check_claim(gm.DominantActionClaim("d", gm.gstar, kind="weak"), GRID).holds


# ----------------------------------------------------------------- plumbing and errors
@pytest.mark.parametrize("total,parts", [(0, 1), (0, 3), (5, 1), (4, 3), (7, 4)])
def test_compositions_and_rank_bijection(total, parts):
    C = compositions(total, parts)
    assert len(C) == math.comb(total + parts - 1, parts - 1)
    assert (C.sum(1) == total).all() and (C >= 0).all()
    assert sorted(composition_rank(C).tolist()) == list(range(len(C)))


def test_scales_beyond_brute_force():
    eqs = pure_nash_equilibria(RomoaGame(30, 4))      # 5^30 profiles; C(33, 4) = 40920 classes
    assert len(eqs) == 5 and sum(e.strict for e in eqs) == 1


def test_bad_input_raises():
    with pytest.raises(ValueError):
        FLGame(3, 0)
    with pytest.raises(ValueError):
        FLGame(0, 2)
    G = RomoaGame(3, 2)
    with pytest.raises(ValueError):
        G.utility(0, (0, 1))
    with pytest.raises(ValueError):
        G.utility(0, (0, 1, 3))
    with pytest.raises(ValueError):
        G.utility(5, (0, 1, 2))
    with pytest.raises(ValueError):
        G.payoff(0, (1, 0, 0))
    with pytest.raises(ValueError):
        AdversaryGame(G, 0)
    with pytest.raises(ValueError):
        check_claim("no such claim", GRID)
    with pytest.raises(ValueError):
        check_claim("flg", [])
    with pytest.raises(ValueError):
        TableGame(np.array([[[np.nan, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]))
    with pytest.raises(ValueError):
        pure_nash_equilibria(random_game([2, 2]), method="symmetric")
    with pytest.raises(ValueError):
        repeated_game_spe(G, 0)
    with pytest.raises(ValueError):
        gm.g(3, 2)


def test_repeated_symmetric_payoff_distinct_equilibria():
    # hawk-dove: the pure NE are the two orderings of (H, D), paying 3 to H and 1 to D
    pay = {(0, (1, 0)): 0, (0, (0, 1)): 3, (1, (1, 0)): 1, (1, (0, 1)): 2}
    hd = gm.FunctionSymmetricGame(2, 2, lambda a, o: pay[(a, o)])
    eqs = pure_nash_equilibria(hd)
    assert [(e.counts, e.strict, e.multiplicity) for e in eqs] == [((1, 1), True, 2)]
    assert equilibrium_profiles(eqs) == {(0, 1): True, (1, 0): True}
    assert repeated_game_spe(hd, 3).case == "multiple"


def test_equilibrium_profiles_limit():
    eqs = pure_nash_equilibria(RomoaGame(12, 6))           # uniform classes: one ordering each
    assert len(equilibrium_profiles(eqs)) == 7
    with pytest.raises(ValueError):
        equilibrium_profiles([gm.Equilibrium((0,) * 10 + (1,) * 10, True, (10, 10),
                                             math.comb(20, 10))], limit=1000)


def test_game_claim_is_named_apart_from_paper_claim():
    """``fedlib.game.GameClaim`` (about a game family) vs ``PaperClaim`` (about a run)."""
    from fedlib import paper_claims

    for cls in (gm.UniqueNashClaim, gm.AdversaryClaim, gm.UtilityClaim, gm.DominantActionClaim,
                gm.RepeatedOutcomeClaim):
        assert issubclass(cls, gm.GameClaim)
    assert gm.GameClaim is not paper_claims.PaperClaim and "Claim" not in gm.__all__
    with pytest.raises(AttributeError):
        gm.Claim  # noqa: B018


def test_game_package_exports_and_module_sizes():
    """The split package keeps every public name at ``fedlib.game`` and no module is oversized."""
    import importlib
    from pathlib import Path

    for name in gm.__all__:
        assert hasattr(gm, name), name
    for mod in ("games", "romoa_games", "equilibria", "repeated", "claims"):
        m = importlib.import_module(f"fedlib.game.{mod}")
        assert len(Path(m.__file__).read_text().splitlines()) <= 400, mod
