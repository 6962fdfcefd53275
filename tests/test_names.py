"""One name, one meaning: each public name says what it is, and renamed keys fail loudly."""

import importlib

import pytest
import torch

from fedlib import aggregators, attacks, game


@pytest.mark.parametrize("old, new", [("fedlib.figures", "fedlib.notebook_runner"),
                                      ("fedlib.paper", "fedlib.romoa_settings")])
def test_modules_are_named_for_what_they_hold(old, new):
    importlib.import_module(new)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_claim_has_one_meaning():
    from fedlib import paper_claims, romoa_settings

    assert not hasattr(game, "Claim") and not hasattr(romoa_settings, "Claim")
    assert paper_claims.PaperClaim is not game.GameClaim


def test_krum_scores_means_the_aggregators_distance_form_only():
    assert not hasattr(attacks, "krum_scores")
    u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    dist = torch.cdist(u, u).pow(2)
    torch.testing.assert_close(attacks.krum_update_scores(u, 1),
                               aggregators.selection.krum_scores(dist, 1))


def test_centered_clipping_radius_and_the_renamed_tau_key():
    agg = aggregators.get("centered_clipping", radius=0.5)
    assert agg.rule.params["radius"] == 0.5
    with pytest.raises(ValueError, match="radius"):
        aggregators.get("centered_clipping", tau=0.5)
    torch.testing.assert_close(aggregators.centered_clipping(torch.ones(3, 2), radius=0.5),
                               torch.full((2,), 0.5 / 2 ** 0.5))


def test_the_games_sanitizing_sharpness_is_not_romoas_syncing_period_tau():
    import inspect

    for fn in (game.sanitizing_factors, game.sanitizing_price, game.sanitizing_weight):
        assert "sharpness" in inspect.signature(fn).parameters
        assert "tau" not in inspect.signature(fn).parameters
    assert "κ=2.0" in game.sanitizing_price(2.0).name
    assert "τ" not in game.sanitizing_weight(2.0).name


@pytest.mark.parametrize("name", ["min_max", "min_sum"])
def test_the_gamma_search_tolerance_is_not_called_tau(name):
    assert attacks.get(name, tolerance=1e-3).tolerance == 1e-3
    with pytest.raises(ValueError, match="'tolerance' instead of 'tau'"):
        attacks.get(name, tau=1e-3)
