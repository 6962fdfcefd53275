"""Romoa's TPA in the lookahead protocol: uploads consistent with the honest paths
(k steps at lookahead iteration k, the moving rate at syncs) and the boost omitted (§2.2)."""

import pytest
import torch

from fedlib import attacks, data, engine, models
from fedlib import romoa_settings as rs
from fedlib.context import AttackContext
from fedlib.flat import ParamSpec


@pytest.fixture(scope="module")
def task():
    train, test = data.load("digits")
    torch.manual_seed(0)
    model = models.build("digits-cnn", num_classes=10)
    clients = list(torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).chunk(5))
    return engine.Task(model=model, spec=ParamSpec.of(model), x_train=train.x, y_train=train.y,
                       x_test=test.x, y_test=test.y, clients=clients, num_classes=10,
                       device=torch.device("cpu"))


def ctx(task, theta, t, m=1, n=5, replica=0):
    """An attack context with no benign data of the attackers: poisoned steps are deterministic."""
    d = theta.numel()
    return AttackContext(
        round=t, theta=theta, spec=task.spec, lr=0.1, batch_size=8, local_steps=1,
        honest_updates=torch.zeros(m, d), benign_updates=torch.zeros(n - m, d), num_clients=n,
        aggregator=None, data=(task.x_train[:0], task.y_train[:0]),
        train=None, forward=task.forward, generator=torch.Generator().manual_seed(t),
        replica=replica)


def tpa(task, **kw):
    att = attacks.get("tpa", source=6, poison=3, num_targets=5, **kw)
    att.prepare(task)
    return att


def test_boost_is_omitted_by_default_and_n_over_m_is_an_option(task):
    theta = torch.cat([p.detach().flatten() for p in task.model.parameters()])
    plain = tpa(task)(ctx(task, theta, 0))
    boosted = tpa(task, boost="n/m")(ctx(task, theta, 0, m=1, n=5))
    torch.testing.assert_close(boosted, 5.0 * plain)
    assert plain.abs().sum() > 0
    for bad in (0.0, -1.0, "k/m", True):
        with pytest.raises(ValueError, match="boost"):
            attacks.get("tpa", boost=bad)


def test_lookahead_upload_at_iteration_k_is_a_k_step_path(task):
    theta = torch.cat([p.detach().flatten() for p in task.model.parameters()])
    persistent = tpa(task)
    for k in (1, 2, 3):
        up = persistent(ctx(task, theta, k - 1))           # θ_ref unchanged: lookahead
        ref = tpa(task, lookahead="restart", steps=k)(ctx(task, theta, k - 1))
        torch.testing.assert_close(up, ref, rtol=1e-5, atol=1e-7)
    # the honest path it must look like: k steps from θ_ref; the restart variant's 1-step
    # upload at every iteration is not
    one = tpa(task, lookahead="restart")(ctx(task, theta, 2))
    assert not torch.allclose(up, one)


@pytest.mark.parametrize("gamma", [1.0, 0.25])
def test_at_a_sync_the_poisoned_state_moves_at_the_moving_rate(task, gamma):
    theta = torch.cat([p.detach().flatten() for p in task.model.parameters()])
    att = tpa(task, moving_rate=gamma)
    first = att(ctx(task, theta, 0))[0]
    state = theta - first                                   # θ_p after one step
    new_ref = theta + 0.01                                  # a sync moved θ̄
    start = att.local_start(ctx(task, new_ref, 1))
    torch.testing.assert_close(start, state + gamma * (new_ref - state))
    # a new run (round not after the last) starts from θ_ref, and replicas are separate
    assert torch.equal(att.local_start(ctx(task, theta, 0)), theta)
    assert torch.equal(att.local_start(ctx(task, theta, 1, replica=1)), theta)
    with pytest.raises(ValueError, match="moving_rate"):
        attacks.get("tpa", moving_rate=0.0)
    with pytest.raises(ValueError, match="lookahead"):
        attacks.get("tpa", lookahead="sometimes")


def test_romoa_setting_passes_the_moving_rate_and_no_tau_steps():
    cfg = rs.romoa_setting(attack="tpa", profile_overrides={"tau": 5})
    assert cfg["attack_params"] == {"source": 6, "poison": 3, "moving_rate": 0.1}
    cfg = rs.romoa_setting(attack="tpa", moving_rate="1", attack_params={"boost": "n/m"})
    assert cfg["attack_params"]["moving_rate"] == 1.0 and cfg["attack_params"]["boost"] == "n/m"
