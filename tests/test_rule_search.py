"""The adaptive attack (fedlib.attacks.RuleSearch): a γ-search against the server's actual rule,
Romoa included, that never changes the rule's state."""

import pytest
import torch

from fedlib import aggregators, attacks
from fedlib.attacks.adaptive import candidate_gammas
from fedlib.context import AttackContext, RoundContext
from fedlib.flat import ParamSpec
from fedlib.romoa import Romoa


def ctx(benign, m, aggregator, spec=None, theta=None, t=0):
    d = benign.shape[1]
    spec = spec or ParamSpec(("w",), ((d,),))
    return AttackContext(
        round=t, theta=torch.zeros(d) if theta is None else theta, spec=spec, lr=0.1,
        batch_size=8, local_steps=1, honest_updates=benign[:m].clone(), benign_updates=benign,
        num_clients=benign.shape[0] + m, aggregator=aggregator,
        data=(torch.zeros(0, d), torch.zeros(0, dtype=torch.long)), train=None, forward=None,
        generator=torch.Generator().manual_seed(t))


def updates(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.0 + 0.3 * torch.randn(n, d, generator=g)


def test_grid_is_in_the_units_of_the_uploads():
    assert candidate_gammas(2.0, 1) == [4.0, 2.0, 1.0, 0.0]
    assert candidate_gammas(0.0, 3) == [0.0]


def test_against_the_mean_it_takes_the_largest_gamma():
    b = updates(6, 20)
    att = attacks.get("rule_search", half_width=2)
    up = att(ctx(b, 1, aggregators.get("mean")))
    assert att.last_gamma == pytest.approx(4 * float(b.norm(dim=1).max()))
    mu = b.mean(0)
    assert float(torch.dot(up[0] - mu, mu)) < 0                 # against the benign direction


def test_against_krum_it_stays_selectable():
    b = updates(9, 30, seed=1)
    krum = aggregators.get("krum", f=2)
    att = attacks.get("rule_search")
    up = att(ctx(b, 2, krum))
    krum(torch.cat([up, b]))
    assert float(krum.weights[:2].sum()) == pytest.approx(1.0)   # Krum picks the attack
    assert 0 < att.last_gamma < 8 * float(b.norm(dim=1).max())


def test_against_romoa_it_queries_without_changing_the_factors():
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    spec = ParamSpec.of(net)
    g = torch.Generator().manual_seed(4)
    theta = torch.randn(spec.dim, generator=g)
    rule = Romoa("calibrated")
    for t in range(3):
        rule.observe(updates(6, spec.dim, seed=t), RoundContext(round=t, theta=theta, spec=spec,
                                                                lr=0.1, sync=False))
    F, it = rule.factors.clone(), rule.iteration
    b = updates(5, spec.dim, seed=9)
    att = attacks.get("rule_search")
    up = att(ctx(b, 1, rule, spec=spec, theta=theta, t=3))
    assert torch.equal(rule.factors, F) and rule.iteration == it
    # the chosen upload is the best of the grid by the rule's own aggregate
    p = -b.mean(0) / b.mean(0).norm()
    rctx = RoundContext(round=3, theta=theta, spec=spec, lr=0.1)
    objs = [float(torch.dot(rule.preview(torch.cat([(b.mean(0) + gm * p)[None], b]), rctx)[0], p))
            for gm in candidate_gammas(float(b.norm(dim=1).max()), 3)]
    assert att.last_objective == pytest.approx(max(objs))
    assert up.shape == (1, spec.dim)


def test_bad_parameters_and_missing_aggregator():
    with pytest.raises(ValueError, match="deviation"):
        attacks.get("rule_search", deviation="orthogonal")
    with pytest.raises(ValueError, match="half_width"):
        attacks.get("rule_search", half_width=-1)
    with pytest.raises(ValueError, match="aggregator"):
        attacks.get("rule_search")(ctx(updates(4, 5), 1, None))
