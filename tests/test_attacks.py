"""Attacks: each one's defining property on small cases, stealth, collusion, the registry."""

import dataclasses
import math

import pytest
import torch

from fedlib import attacks, data, engine, models
from fedlib.attacks import fang, minmax
from fedlib.context import AttackContext
from fedlib.flat import ParamSpec, flatten_module

ALL = ["alie", "eb", "fltrust_adaptive", "gaussian", "ipm", "label_flip", "lmp_krum",
       "lmp_trimmed_mean", "min_max", "min_sum", "rule_search", "sign_flip", "tpa", "upa"]
"""The attacks tested here; L2A's RL attack ("rl", fedlib.rl) trains a policy: tested there."""


# ---------------------------------------------------------------- stand-ins and fixtures
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: intra-op threads gain nothing, and on a busy 2-core CPU two
    threads made this file ~10× slower. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class MeanAgg:
    """Tiny stand-in for fedlib.aggregators' "mean" (this file must not depend on it)."""
    name = "mean"

    def __call__(self, updates, ctx=None):
        self.weights = torch.full((updates.shape[0],), 1.0 / updates.shape[0])
        return updates.mean(0)


class KrumAgg:
    """Tiny stand-in for Krum (Blanchard et al.), independent of fang.krum_update_scores."""
    name = "krum"

    def __init__(self, f):
        self.f = f

    def __call__(self, updates, ctx=None):
        n = updates.shape[0]
        scores = []
        for i in range(n):
            d = sorted(float(((updates[i] - updates[j]) ** 2).sum()) for j in range(n) if j != i)
            scores.append(sum(d[: n - self.f - 2]))
        best = min(range(n), key=lambda i: scores[i])
        self.weights = torch.zeros(n)
        self.weights[best] = 1.0
        return updates[best]


class TrimmedMeanAgg:
    name = "trimmed_mean"

    def __init__(self, f):
        self.f = f

    def __call__(self, updates, ctx=None):
        s = updates.sort(0).values
        return s[self.f: updates.shape[0] - self.f].mean(0)


def tensor_ctx(benign, honest, aggregator=None, round=0, seed=0, theta=None):
    """An AttackContext on plain tensors (no model): for the update-only attacks."""
    d = benign.shape[1]

    def no_model(*a, **k):
        raise AssertionError("this attack must not train")

    return AttackContext(
        round=round, theta=torch.zeros(d) if theta is None else theta,
        spec=ParamSpec(("w",), ((d,),)), lr=0.1, batch_size=8, local_steps=1,
        honest_updates=honest, benign_updates=benign,
        num_clients=benign.shape[0] + honest.shape[0], aggregator=aggregator or MeanAgg(),
        data=(torch.zeros(0, d), torch.zeros(0, dtype=torch.long)), train=no_model,
        forward=no_model, generator=torch.Generator().manual_seed(seed))


def gaussian_updates(n, d, seed=0, shift=1.0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return shift + scale * torch.randn(n, d, generator=g)


@pytest.fixture(scope="module")
def digits_task():
    train, test = data.load("digits")
    torch.manual_seed(0)
    model = models.build("digits-cnn", num_classes=10)
    clients = list(torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).chunk(10))
    return engine.Task(model=model, spec=ParamSpec.of(model), x_train=train.x, y_train=train.y,
                       x_test=test.x, y_test=test.y, clients=clients, num_classes=10,
                       device=torch.device("cpu"))


_HONEST: dict = {}


def model_ctx(task, theta, m, round=0, aggregator=None, lr=0.1, batch_size=32, steps=1):
    """Run one honest round of the n = len(task.clients) clients, attackers = clients 0..m−1."""
    n = len(task.clients)
    key = (id(task), round, lr, batch_size, steps, tuple(theta[:8].tolist()), float(theta.sum()))
    if key not in _HONEST:
        batches = engine.sample_batches(task, list(range(n)), round, steps, batch_size, seed=0)
        local = engine.local_sgd(task, theta.expand(n, -1), batches, lr)
        _HONEST[key] = theta.unsqueeze(0) - local
    updates = _HONEST[key].clone()
    mal_idx = torch.cat([task.clients[i] for i in range(m)])
    g = torch.Generator().manual_seed(round + 17)
    return AttackContext(
        round=round, theta=theta, spec=task.spec, lr=lr, batch_size=batch_size, local_steps=steps,
        honest_updates=updates[:m], benign_updates=updates[m:], num_clients=n,
        aggregator=aggregator or MeanAgg(), data=(task.x_train[mal_idx], task.y_train[mal_idx]),
        train=lambda th, x, y, st, lr_, bs, ascent=False: engine.sgd(
            task, th, x, y, st, lr_, bs, generator=g, ascent=ascent),
        forward=task.forward, generator=g, population=n, num_attackers_total=m)


def build(name, task=None, **params):
    defaults = {"tpa": dict(source=6, poison=3, num_targets=5),
                "fltrust_adaptive": dict(server_update="root", root_size=50)}
    att = attacks.get(name, **{**defaults.get(name, {}), **params})
    if task is not None and callable(getattr(att, "prepare", None)):
        att.prepare(task)
    return att


# ---------------------------------------------------------------- registry
def test_registry_names_and_errors():
    assert attacks.available() == sorted(ALL + ["rl"])
    with pytest.raises(ValueError, match="available"):
        attacks.get("backdoor")
    with pytest.raises(ValueError, match="unknown parameters"):
        attacks.get("ipm", eps=3)
    for name in ALL:
        att = attacks.get(name)
        assert att.name == name and att.knowledge in ("full", "partial")
    with pytest.raises(ValueError, match="variant"):
        attacks.get("upa", variant="bulyan")
    with pytest.raises(ValueError, match="stealth"):
        attacks.get("tpa", stealth=1.5)
    with pytest.raises(ValueError, match="stealth"):
        attacks.get("ipm", stealth=[0.5, -0.1])


# ---------------------------------------------------------------- defining properties
def test_ipm_inner_product_with_benign_mean_is_negative():
    benign = gaussian_updates(8, 50, seed=1)
    honest = gaussian_updates(2, 50, seed=2)
    out = attacks.get("ipm")(tensor_ctx(benign, honest))
    assert out.shape == (2, 50)
    torch.testing.assert_close(out[0], -5.0 * benign.mean(0))
    agg = torch.cat([out, benign]).mean(0)
    assert float(agg @ benign.mean(0)) < 0


def test_sign_flip_negates():
    honest = gaussian_updates(3, 20, seed=4)
    out = attacks.get("sign_flip")(tensor_ctx(gaussian_updates(5, 20), honest))
    assert torch.equal(out, -honest)
    doubled = attacks.get("sign_flip", scale=2.0)(tensor_ctx(gaussian_updates(5, 20), honest))
    assert torch.equal(doubled, -2.0 * honest)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_krum_lmp_is_selected_by_krum(m):
    """Fang §4.1 on a constructed case: n = 10 and Krum (f = m) picks the crafted update.

    As for SGD updates, the benign deltas' mean is small next to their spread."""
    benign = gaussian_updates(10 - m, 40, seed=m, shift=0.05, scale=1.0)
    honest = gaussian_updates(m, 40, seed=10 + m, shift=0.05, scale=1.0)
    krum = KrumAgg(f=m)
    att = attacks.get("lmp_krum")
    out = att(tensor_ctx(benign, honest, aggregator=krum))
    assert out.shape == (m, 40) and torch.equal(out, out[:1].expand(m, -1))
    # the crafted delta is −λ·sign(mean Δ): it pushes θ against the benign direction
    lam = att.last_lambda
    assert lam > 1e-5
    torch.testing.assert_close(out[0], -lam * torch.sign(benign.mean(0)))
    chosen = krum(torch.cat([out, benign]))
    assert krum.weights[:m].sum() == 1 and torch.equal(chosen, out[0])
    # the surrogate Krum (another rule on the server) agrees with the stand-in
    assert fang.krum_select(torch.cat([out, benign]), m) < m
    # and λ is the largest power-of-two fraction of Fang's bound that Krum accepts
    bound = fang.krum_lambda_bound(benign, 10, m)
    k = round(math.log2(bound / lam))
    assert abs(bound / 2 ** k - lam) < 1e-6 * bound
    if k > 0:
        twice = -(2 * lam) * torch.sign(benign.mean(0))
        krum(torch.cat([twice.expand(m, -1), benign]))
        assert krum.weights[:m].sum() == 0


def test_krum_update_scores_match_definition():
    u = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    # f = 0: n − f − 2 = 2 nearest squared distances
    expect = torch.tensor([1 + 9, 1 + 4, 4 + 9, 49 + 81.0])
    torch.testing.assert_close(fang.krum_update_scores(u, 0), expect)
    assert fang.krum_select(u, 0) == 1
    with pytest.raises(ValueError, match="n − f − 2"):
        fang.krum_update_scores(u, 2)


@pytest.mark.parametrize("space", ["model", "update"])
def test_trimmed_mean_lmp_uses_fangs_intervals(space):
    g = torch.Generator().manual_seed(0)
    benign = torch.randn(8, 300, generator=g)
    honest = torch.randn(2, 300, generator=g)
    theta = torch.randn(300, generator=g)
    att = attacks.get("lmp_trimmed_mean", space=space)
    out = att(tensor_ctx(benign, honest, theta=theta))
    origin = theta if space == "model" else torch.zeros(300)
    vals, crafted = origin - benign, origin - out         # model parameters (or changes)
    push = torch.sign(benign.mean(0))                      # −s: against the benign change
    wmax, wmin = vals.max(0).values, vals.min(0).values
    up, down = push > 0, push < 0
    lo_up = torch.where(wmax > 0, wmax, wmax)
    hi_up = torch.where(wmax > 0, 2 * wmax, wmax / 2)
    lo_dn = torch.where(wmin > 0, wmin / 2, 2 * wmin)
    eps = 1e-5
    assert (crafted[:, up] >= lo_up[up] - eps).all() and (crafted[:, up] <= hi_up[up] + eps).all()
    assert (crafted[:, down] >= lo_dn[down] - eps).all()
    assert (crafted[:, down] <= wmin[down] + eps).all()
    assert not torch.equal(out[0], out[1])                 # independent draws per attacker


def test_upa_moves_trimmed_mean_against_the_benign_direction():
    """Fang's objective s^T(w − w') > 0 against the rule it is tailored to."""
    benign = gaussian_updates(8, 200, seed=5, shift=0.2, scale=1.0)
    honest = gaussian_updates(2, 200, seed=6, shift=0.2, scale=1.0)
    tm = TrimmedMeanAgg(f=2)
    ctx = tensor_ctx(benign, honest, aggregator=tm)
    before = tm(torch.cat([honest, benign]))
    after = tm(torch.cat([attacks.get("upa")(ctx), benign]))
    s = fang.change_direction(benign)
    # models change by −Δ: w = θ − agg, so s^T(w − w') = s^T(agg' − agg)
    assert float(s @ (after - before)) > 0


def test_upa_variant_choice():
    upa = attacks.get("upa")
    assert upa.variant_for(KrumAgg(1)) == "krum"
    for name in ("mean", "rfa", "geometric_median", "romoa", "median", "trimmed_mean"):
        agg = type("A", (), {"name": name})()
        assert upa.variant_for(agg) == "trimmed_mean"
    assert attacks.get("upa", variant="krum").variant_for(MeanAgg()) == "krum"
    benign, honest = gaussian_updates(7, 30), gaussian_updates(3, 30, seed=9)
    out = upa(tensor_ctx(benign, honest, aggregator=KrumAgg(3)))
    assert upa.last_variant == "krum" and torch.equal(out[0], out[2])


def test_min_max_and_min_sum_binary_search():
    benign = gaussian_updates(9, 60, seed=3)
    mu = benign.mean(0)
    for name in ("min_max", "min_sum"):
        for dev in ("unit_vec", "std", "sign"):
            att = attacks.get(name, deviation=dev)
            out = att(tensor_ctx(benign, gaussian_updates(1, 60, seed=8)))
            gamma = att.last_gamma
            p = minmax.perturbation(benign, dev)
            torch.testing.assert_close(out[0], mu + gamma * p)
            assert 0 < gamma < 20

            def ok(gm, p=p, name=name):
                dist = (benign - (mu + gm * p)).norm(dim=1)
                pair = torch.cdist(benign, benign)
                if name == "min_max":
                    return dist.max() <= pair.max()
                return dist.pow(2).sum() <= pair.pow(2).sum(1).max()
            assert ok(gamma) and not ok(gamma + 1e-3)


def test_alie_mean_minus_z_sigma():
    assert math.isclose(attacks.alie_z(10, 2), 0.2533471, abs_tol=1e-6)   # Φ⁻¹(0.6)
    benign = gaussian_updates(8, 25, seed=2)
    out = attacks.get("alie")(tensor_ctx(benign, gaussian_updates(2, 25, seed=3)))
    torch.testing.assert_close(out[1], benign.mean(0) - attacks.alie_z(10, 2) * benign.std(0))
    # one reference update (partial knowledge, one attacker): σ = 0, the attacker sends μ
    lone = gaussian_updates(1, 25, seed=4)
    out = attacks.get("alie", knowledge="partial")(tensor_ctx(benign, lone))
    torch.testing.assert_close(out, lone)


def test_gaussian_noise_is_seeded():
    b, h = gaussian_updates(5, 4000), gaussian_updates(2, 4000, seed=1)
    a1 = attacks.get("gaussian", std=2.0)(tensor_ctx(b, h, seed=3))
    a2 = attacks.get("gaussian", std=2.0)(tensor_ctx(b, h, seed=3))
    assert torch.equal(a1, a2) and abs(float(a1.std()) - 2.0) < 0.1 and abs(float(a1.mean())) < 0.1
    c = attacks.get("gaussian", std=0.0, center="honest")(tensor_ctx(b, h))
    assert torch.equal(c, h)


def test_fltrust_aggregate_and_adaptive_attack():
    g0 = torch.tensor([1.0, 0.0, 0.0])
    u = torch.tensor([[2.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    # trust 1, 0, 1/√2; each rescaled to ‖g0‖ = 1
    r2 = math.sqrt(2)
    expect = (torch.tensor([1.0, 0, 0]) + (1 / r2) * torch.tensor([1.0, 1, 0]) / r2) / (1 + 1 / r2)
    torch.testing.assert_close(attacks.fltrust_aggregate(u, g0), expect)
    benign = gaussian_updates(8, 100, seed=1, shift=0.5)
    honest = gaussian_updates(2, 100, seed=2, shift=0.5)
    ctx = tensor_ctx(benign, honest)
    g0 = benign.mean(0)
    before = attacks.fltrust_aggregate(torch.cat([honest, benign]), g0)
    s = torch.sign(before)
    gains = {}
    for init in ("trim", "server"):
        for iters in (0, 20):
            out = attacks.get("fltrust_adaptive", server_update="benign_mean", init=init,
                              iterations=iters, step_size=0.05)(ctx)
            torch.testing.assert_close(out.norm(dim=1), g0.norm().expand(2))
            after = attacks.fltrust_aggregate(torch.cat([out, benign]), g0)
            gains[init, iters] = float(s @ (before - after))
    assert gains["server", 20] > gains["server", 0] and gains["server", 20] > 0
    assert gains["trim", 20] >= gains["trim", 0] - 1e-6


def test_fang_trimmed_mean_attack_crafts_on_updates_by_default():
    """Fang §4.2 on updates (the default): crafted deltas of the benign magnitude; the literal
    model-space reading b-scales the parameters, so its deltas are of the order of |θ|."""
    g = torch.Generator().manual_seed(3)
    benign = 0.01 * torch.randn(8, 500, generator=g) + 0.005
    honest = 0.01 * torch.randn(2, 500, generator=g) + 0.005
    theta = torch.randn(500, generator=g)
    assert attacks.get("lmp_trimmed_mean").space == "update"
    assert attacks.get("upa")._trim.space == "update"
    scale = float(benign.norm(dim=1).mean())
    for name in ("lmp_trimmed_mean", "upa"):
        default = attacks.get(name)(tensor_ctx(benign, honest, theta=theta))
        literal = attacks.get(name, space="model")(tensor_ctx(benign, honest, theta=theta))
        assert float(default.norm(dim=1).max()) < 3 * scale            # b = 2: ≤ 2·extremes
        assert float(literal.norm(dim=1).min()) > 20 * scale           # ~|θ|: a trivial outlier
        # both push the aggregate against Fang's s
        s = fang.change_direction(benign)
        assert float(s @ (torch.cat([default, benign]).mean(0) - benign.mean(0))) > 0


def test_fltrust_adaptive_starts_trusted_and_moves():
    """Cao et al.'s Trim initialisation has trust 0 here (no gradient: it cannot move); the
    default turns it to 45° from g_0, so the ascent starts trusted and gains."""
    benign = gaussian_updates(8, 100, seed=1, shift=0.2)
    honest = gaussian_updates(2, 100, seed=2, shift=0.2)
    g0 = benign.mean(0)
    literal = attacks.get("fltrust_adaptive", server_update="benign_mean", init="trim")
    out = literal(tensor_ctx(benign, honest))
    cos = out @ g0 / (out.norm(dim=1) * g0.norm())
    assert (cos <= 0).all()                                   # untrusted ...
    still = attacks.get("fltrust_adaptive", server_update="benign_mean", init="trim",
                        iterations=0)(tensor_ctx(benign, honest))
    assert torch.equal(out, still)                            # ... and it stayed there
    start = attacks.get("fltrust_adaptive", server_update="benign_mean", iterations=0)
    first = start(tensor_ctx(benign, honest))
    torch.testing.assert_close(first @ g0 / (first.norm(dim=1) * g0.norm()),
                               torch.full((2,), 2 ** -0.5))
    moved = attacks.get("fltrust_adaptive", server_update="benign_mean")
    last = moved(tensor_ctx(benign, honest))
    assert moved.last_gain > max(start.last_gain, literal.last_gain, 0.0)
    assert (last @ g0 > 0).all()                              # still trusted


@pytest.mark.parametrize("init", ["trim_trusted", "server"])
def test_fltrust_adaptive_steps_act_in_the_units_of_the_updates(init):
    """Scaling every update (and so g_0) by 10⁻³ scales the crafted updates by 10⁻³ exactly:
    the ascent does not depend on how large η·∇ is."""
    benign = gaussian_updates(8, 60, seed=4, shift=0.3)
    honest = gaussian_updates(2, 60, seed=5, shift=0.3)
    def att():
        return attacks.get("fltrust_adaptive", server_update="benign_mean", init=init)

    big = att()(tensor_ctx(benign, honest, seed=1))
    small = att()(tensor_ctx(1e-3 * benign, 1e-3 * honest, seed=1))
    torch.testing.assert_close(small * 1e3, big, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(big / big.norm(dim=1, keepdim=True),
                              (benign.mean(0) / benign.mean(0).norm()).expand(2, -1), atol=1e-2)


def test_fltrust_adaptive_lowers_fltrusts_accuracy():
    """Short FLTrust runs on digits (10 clients, 5 adaptive attackers, 10 rounds): the final
    accuracy, averaged over three seeds, drops against the same configs without the attack."""
    from fedlib import runs
    acc = {"none": [], "fltrust_adaptive": []}
    for seed in (0, 1, 2):
        for attack in acc:
            cfg = dict(RUN, rounds=10, eval_every=10, eval_size=300, lr=0.3, seed=seed,
                       aggregator="fltrust", root_size=60, num_attackers=5, attack=attack,
                       attack_params={"root_size": 60, "seed": seed} if attack != "none" else {})
            res = runs.run(cfg, cache=False, progress=False)
            acc[attack].append(res.history["test_accuracy"][-1])
    clean, attacked = sum(acc["none"]) / 3, sum(acc["fltrust_adaptive"]) / 3
    assert attacked < clean - 0.05, acc


def test_eb_boost_is_k_over_m_of_the_federation(digits_task):
    """L2A App. E.1: boost K/M = 100/20 = 5, whatever this round's uploads/attackers are."""
    task = digits_task
    theta = flatten_module(task.model)

    def ctx(**fields):
        return dataclasses.replace(model_ctx(task, theta, m=1), **fields)

    l2a = dict(population=100, num_attackers_total=20)
    assert attacks.get("eb").boost_factor(ctx(**l2a)) == 5.0          # not 10 uploads / 1
    torch.testing.assert_close(attacks.get("eb")(ctx(**l2a)),
                               attacks.get("eb", boost=5.0)(ctx(**l2a)))
    with pytest.raises(ValueError, match="boost"):
        attacks.get("eb")(ctx(population=None, num_attackers_total=None))
    out = attacks.get("eb", boost=2.0)(ctx(population=None, num_attackers_total=None))
    assert out.shape == (1, theta.numel())


def test_eb_stops_a_diverging_ascent_at_its_last_finite_iterate():
    """EB on a blown-up model: the ascent overflows at step 3 of 5, so θ_E = θ after 2 steps."""
    d = 6
    ctx = tensor_ctx(torch.zeros(4, d), torch.zeros(2, d))
    calls = []

    def ascent(theta, x, y, steps, lr, bs, ascent=False):
        calls.append(steps)
        return theta + 1.0 if len(calls) < 3 else theta * float("inf")

    ctx = dataclasses.replace(ctx, train=ascent, data=(torch.zeros(3, d), torch.zeros(3)),
                              population=100, num_attackers_total=20)
    eb = attacks.get("eb")
    out = eb(ctx)
    assert eb.last_steps == 2 and calls == [1, 1, 1]
    torch.testing.assert_close(out, torch.full((2, d), -2.0 * 5))   # 5·(θ − (θ + 2))


# ---------------------------------------------------------------- model-based attacks
def test_eb_increases_attacker_loss(digits_task):
    task = digits_task
    theta = flatten_module(task.model)
    ctx = model_ctx(task, theta, m=2)
    out = attacks.get("eb")(ctx)
    assert out.shape == (2, theta.numel()) and torch.equal(out[0], out[1])
    x, y = ctx.data
    unboosted = theta - out[0] / (10 / 2)
    assert task.loss(unboosted, x, y) > task.loss(theta, x, y)


def test_label_flip_trains_on_flipped_labels(digits_task):
    task = digits_task
    theta = flatten_module(task.model)
    ctx = model_ctx(task, theta, m=2)
    att = build("label_flip", task)
    assert att.num_classes == 10
    y = torch.tensor([0, 3, 9])
    assert att.flip(y, 10).tolist() == [9, 6, 0]
    six_to_three = attacks.get("label_flip", mapping={"6": 3})
    assert six_to_three.flip(torch.tensor([6, 2]), 10).tolist() == [3, 2]
    out = att(ctx)
    assert out.shape == ctx.honest_updates.shape and not torch.equal(out[0], out[1])
    x, yy = ctx.data
    flipped = 9 - yy
    assert task.loss(theta - out[0], x, flipped) < task.loss(theta, x, flipped)


def test_tpa_targets_are_deterministic(digits_task):
    a, b = build("tpa", digits_task), build("tpa", digits_task)
    xa, ya, pa = a.targets
    assert torch.equal(xa, b.targets[0]) and (ya == 6).all() and (pa == 3).all() and len(ya) == 5
    assert not torch.equal(xa, build("tpa", digits_task, target_seed=1).targets[0])
    with pytest.raises(ValueError, match="prepare"):
        attacks.get("tpa")(model_ctx(digits_task, flatten_module(digits_task.model), 1))


def test_tpa_raises_poison_confidence_without_defense(digits_task):
    """A short FedAvg run on sklearn digits: 10 clients, 1 TPA attacker, 6 → 3.

    Whether the targets flip to 3 within a short run depends on the honest minibatches (about
    half of the batch-stream seeds flip them by round 40); by round 80 every seed tried raised
    the poison label's confidence by ≥ 0.36 and cut the true label's by ≥ 0.35."""
    task = digits_task
    theta0 = flatten_module(task.model)

    def run(attack):
        theta = theta0.clone()
        for t in range(80):
            torch.manual_seed(t)
            ctx = model_ctx(task, theta, m=1, round=t, lr=0.3)
            ups = torch.cat([ctx.honest_updates, ctx.benign_updates])
            if attack is not None:
                ups[:1] = attack(ctx)
            theta = theta - ups.mean(0)
        return theta

    att = build("tpa", task, boost="n/m")                  # Bhagoji's explicit boosting
    xt, yt, yp = att.targets
    clean, poisoned = run(None), run(att)

    def conf(th, lab):
        return engine.confidence(task, th, xt, lab)

    def acc(th):
        return engine.evaluate(task, th, task.x_test, task.y_test)["accuracy"]

    assert conf(clean, yt) > 0.5                           # the clean model learned the 6s
    assert conf(poisoned, yp) > conf(clean, yp) + 0.3      # TPA: poison label confidence up
    assert conf(poisoned, yt) < conf(clean, yt) - 0.25     # and the true label's down
    assert acc(poisoned) > acc(clean) - 0.1                # overall accuracy barely moves


# ---------------------------------------------------------------- stealth and collusion
def test_stealth_mix_formula():
    h, p = torch.randn(3, 7), torch.randn(3, 7)
    assert torch.equal(attacks.stealth_mix(h, p, 0.0), h)
    assert torch.equal(attacks.stealth_mix(h, p, 1.0), p)
    torch.testing.assert_close(attacks.stealth_mix(h, p, 0.25), 0.75 * h + 0.25 * p)
    torch.testing.assert_close(attacks.stealth_mix(h, p, 0.25, "reference"), 0.25 * p)
    # Romoa §2.2 in model terms: A_t = θ_h − α(θ_h − O_t) with θ_h = θ − Δ_h, O_t = θ − Δ_p
    theta = torch.randn(7)
    a = 0.4
    th_h, o = theta - h, theta - p
    torch.testing.assert_close(theta - attacks.stealth_mix(h, p, a), th_h - a * (th_h - o))
    assert attacks.stealth_at([0.0, 0.5, 1.0], 7) == 1.0
    assert attacks.stealth_at(lambda t: t / 10, 3) == 0.3
    with pytest.raises(ValueError):
        attacks.stealth_at(lambda t: 2.0, 0)


@pytest.mark.parametrize("name", ALL)
def test_stealth_zero_reproduces_the_honest_update_exactly(name, digits_task):
    task = digits_task
    theta = flatten_module(task.model)
    ctx = model_ctx(task, theta, m=2, aggregator=KrumAgg(2))
    full = build(name, task)
    honest = build(name, task, stealth=0.0)(ctx)
    assert torch.equal(honest, ctx.honest_updates)
    sched = build(name, task, stealth=[0.0, 1.0])
    assert torch.equal(sched(ctx), ctx.honest_updates)          # round 0: α_0 = 0
    half = build(name, task, stealth=0.5)
    ctx2 = model_ctx(task, theta, m=2, aggregator=KrumAgg(2))  # same round, fresh generator
    poison = full(ctx2)
    ctx3 = model_ctx(task, theta, m=2, aggregator=KrumAgg(2))
    torch.testing.assert_close(half(ctx3), 0.5 * ctx.honest_updates + 0.5 * poison)


@pytest.mark.parametrize("name", ALL)
def test_colluding_attackers_one_to_half(name, digits_task):
    """m = 1 … ⌈n/2⌉ − 1 attackers out of n = 10: right shape, finite, deterministic."""
    task = digits_task
    theta = flatten_module(task.model)
    for m in (1, 2, 4):
        ctx = model_ctx(task, theta, m=m, aggregator=KrumAgg(m))
        out = build(name, task)(ctx)
        assert out.shape == (m, theta.numel()) and torch.isfinite(out).all()
        again = build(name, task)(model_ctx(task, theta, m=m, aggregator=KrumAgg(m)))
        assert torch.equal(out, again)


# ---------------------------------------------------------------- with the engine and real rules
def test_krum_lmp_against_fedlib_krum():
    from fedlib import aggregators
    for m in (1, 2, 3):                                   # Krum needs n > 2f + 2
        benign = gaussian_updates(10 - m, 40, seed=m, shift=0.05, scale=1.0)
        krum = aggregators.get("krum", f=m)
        out = attacks.get("upa")(tensor_ctx(benign, gaussian_updates(m, 40, seed=m + 1),
                                            aggregator=krum))
        krum(torch.cat([out, benign]))
        assert krum.weights[:m].sum() == 1


RUN = dict(dataset="digits", model="digits-cnn", num_clients=10, rounds=3, lr=0.1, batch_size=16,
           eval_every=3, eval_size=200, device="cpu", seed=0)


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))


def test_zero_stealth_run_equals_no_attack_run(cache_in_tmp):
    from fedlib import runs
    clean = runs.run(dict(RUN, rounds=4, eval_every=2), cache=False, progress=False)
    zero = runs.run(dict(RUN, rounds=4, eval_every=2, attack="tpa", num_attackers=2,
                         attack_params={"stealth": 0.0, "num_targets": 5}),
                    cache=False, progress=False)
    assert zero.history["test_accuracy"] == clean.history["test_accuracy"]
    assert torch.equal(zero.theta, clean.theta)
    assert len(zero.history["target_poison_confidence"]) == 3


@pytest.mark.parametrize("name,aggregator,params", [
    ("upa", "krum", {"f": 2}), ("upa", "median", {}), ("upa", "rfa", {}),
    ("fltrust_adaptive", "fltrust", {}), ("min_max", "trimmed_mean", {"f": 2}),
    ("tpa", "mean", {}), ("label_flip", "multi_krum", {"f": 2})])
def test_attacks_in_the_engine(name, aggregator, params, cache_in_tmp):
    from fedlib import runs
    res = runs.run(dict(RUN, attack=name, num_attackers=2, aggregator=aggregator,
                        aggregator_params=params,
                        attack_params={"num_targets": 5} if name == "tpa" else {}),
                   cache=False, progress=False)
    assert all(math.isfinite(a) for a in res.history["test_accuracy"])


def test_fltrust_adaptive_rebuilds_the_servers_root_update():
    from fedlib import runs
    cfg = runs.RunConfig.from_dict(dict(RUN, aggregator="fltrust", root_size=60))
    task = runs.build_task(cfg)
    theta = flatten_module(task.model)
    att = attacks.get("fltrust_adaptive", root_size=60, seed=0)
    att.prepare(task)
    ctx = model_ctx(task, theta, m=2, lr=cfg.lr)
    server = runs.server_update_fn(cfg, task, cfg.seed)(theta)
    torch.testing.assert_close(att.server_update_of(ctx), server)
