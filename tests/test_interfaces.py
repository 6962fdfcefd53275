"""Every registered aggregation rule and attack satisfies its Protocol in ``fedlib.interfaces``."""

import pytest
import torch

from fedlib import aggregators, attacks
from fedlib.context import RoundContext
from fedlib.flat import ParamSpec
from fedlib.interfaces import (AggregationRule, Attack, AttackHook, BatchedRule,
                               LookaheadObserver, Resettable, accepts_attack_context)

RULE_PARAMS = {"krum": dict(f=1), "multi_krum": dict(f=1), "trimmed_mean": dict(f=1),
               "bulyan": dict(f=1), "weighted_mean": dict(client_weights=[1.0] * 11)}
"""Valid parameters for the rules that have required ones (n = 11 uploads below)."""


def round_context(d: int) -> RoundContext:
    spec = ParamSpec.of(torch.nn.Linear(d - 1, 1))
    return RoundContext(round=0, theta=torch.zeros(d), spec=spec, lr=0.1,
                        client_ids=torch.arange(11),
                        server_update=lambda: torch.full((d,), 0.01), num_malicious=1)


@pytest.mark.parametrize("name", aggregators.available())
def test_every_rule_is_an_aggregation_rule(name):
    rule = aggregators.get(name, **RULE_PARAMS.get(name, {}))
    assert isinstance(rule, AggregationRule), name
    assert isinstance(rule.name, str) and rule.name
    updates = torch.randn(11, 8, generator=torch.Generator().manual_seed(0))
    out = rule(updates, round_context(8))
    assert out.shape == (8,)
    assert rule.weights is not None and tuple(rule.weights.shape) == (11,)
    if getattr(rule, "batched", False):
        assert isinstance(rule, BatchedRule)
    if callable(getattr(rule, "observe", None)):
        assert isinstance(rule, LookaheadObserver)
    assert isinstance(rule, Resettable)


def test_romoa_is_a_lookahead_observer_and_not_batched():
    rule = aggregators.get("romoa")
    assert isinstance(rule, LookaheadObserver)
    assert not getattr(rule, "batched", False)


@pytest.mark.parametrize("name", attacks.available())
def test_every_attack_is_an_attack(name):
    attack = attacks.get(name)
    assert isinstance(attack, Attack), name
    assert attack.knowledge in ("full", "partial")
    assert attack.targets is None or len(attack.targets) == 3


def test_protocols_reject_what_lacks_their_members():
    def rule(updates, ctx=None):
        return updates.mean(0)

    assert not isinstance(rule, AggregationRule)                  # no name, no weights
    assert not isinstance(object(), AttackHook)
    assert not isinstance(aggregators.get("mean"), LookaheadObserver)


def test_a_plain_function_fits_the_attack_seam():
    def hook(ctx):
        return ctx.honest_updates.neg()

    def two_args(ctx, other):
        return ctx

    assert isinstance(hook, AttackHook)
    assert accepts_attack_context(hook)
    assert accepts_attack_context(lambda ctx, scale=2.0: ctx)
    assert accepts_attack_context(attacks.get("sign_flip"))
    assert not accepts_attack_context(two_args)
    assert not accepts_attack_context(lambda: None)
    assert not accepts_attack_context(3)
