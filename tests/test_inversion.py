"""fedlib.inversion: ḡ, inverting gradients, iDLG labels, the denoiser, quality, the learner.

Everything runs on scikit-learn's 8×8 digits and fedlib's tiny ``digits-cnn`` (2,970
parameters); nothing reads ../shared or the network.
"""

import math

import pytest
import torch
from sklearn.datasets import load_digits

from fedlib import engine, models, runs
from fedlib.context import RoundEvent
from fedlib.flat import ParamSpec, flatten_module
from fedlib.inversion import (DenoisingAutoencoder, DistributionLearner, add_noise,
                              aggregate_gradient, attacker_samples, classifier_accuracy,
                              denoise, dummy_gradient, infer_label, invert_gradient, nearest,
                              psnr, reconstruction_loss, reconstruction_quality, ssim,
                              total_variation, train_denoiser)
from fedlib.inversion.gradient import _objective_fns


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


def tiny(seed=0):
    torch.manual_seed(seed)
    model = models.build("digits-cnn")
    return model, ParamSpec.of(model), flatten_module(model)


def make_task(x, y, model, spec):
    clients = list(torch.arange(len(x)).chunk(4))
    return engine.Task(model, spec, x, y, x, y, clients, 10, torch.device("cpu"))


# ----------------------------------------------------------------- aggregate gradient
def test_aggregate_gradient_matches_a_hand_built_two_step_run(digits):
    x, y = digits
    model, spec, th0 = tiny()
    task = make_task(x, y, model, spec)
    lr = 0.05
    g0 = engine.gradient(task, th0, x[:32], y[:32])
    th1 = th0 - lr * g0
    g1 = engine.gradient(task, th1, x[32:64], y[32:64])
    th2 = th1 - lr * g1
    torch.testing.assert_close(aggregate_gradient(th0, th1, lr, 1, 0), g0, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(aggregate_gradient(th1, th2, lr, 6, 5), g1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(aggregate_gradient(th0, th2, lr, 2, 0), (g0 + g1) / 2,
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="t > t_prev"):
        aggregate_gradient(th0, th1, lr, 3, 3)
    with pytest.raises(ValueError, match="positive"):
        aggregate_gradient(th0, th1, 0.0, 1, 0)
    with pytest.raises(ValueError, match="same shape"):
        aggregate_gradient(th0, th1[:-1], lr, 1, 0)


def test_dummy_gradient_is_the_engines_gradient(digits):
    x, y = digits
    model, spec, th = tiny()
    task = make_task(x, y, model, spec)
    torch.testing.assert_close(dummy_gradient(model, spec, th, x[:8], y[:8]),
                               engine.gradient(task, th, x[:8], y[:8]))
    # soft labels with a huge margin are hard labels
    logits = 50.0 * torch.nn.functional.one_hot(y[:8], 10).float()
    torch.testing.assert_close(dummy_gradient(model, spec, th, x[:8], logits),
                               engine.gradient(task, th, x[:8], y[:8]), rtol=1e-4, atol=1e-6)
    g = engine.gradient(task, th, x[:8], y[:8])
    loss = float(reconstruction_loss(model, spec, th, g, x[:8], y[:8], tv=0.0))
    assert loss == pytest.approx(0.0, abs=1e-6)
    loss = float(reconstruction_loss(model, spec, th, -g, x[:8], y[:8], tv=0.0))
    assert loss == pytest.approx(2.0, abs=1e-5)


def test_total_variation():
    flat = torch.full((3, 1, 5, 5), 0.7)
    assert torch.equal(total_variation(flat), torch.zeros(3))
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0                           # vertical stripes: |Δx| = 1 everywhere
    assert total_variation(stripes).item() == pytest.approx(1.0)
    assert total_variation(torch.zeros(2, 3, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError):
        total_variation(torch.zeros(4, 4))


# ----------------------------------------------------------------- inverting gradients
@pytest.mark.parametrize("labels", ["known", "infer", "soft"])
def test_inversion_recovers_a_single_image_from_its_exact_gradient(digits, labels):
    x, y = digits
    model, spec, th = tiny()
    target, label = x[5:6], y[5:6]
    g = dummy_gradient(model, spec, th, target, label).detach()
    inv = invert_gradient(model, spec, th, g, shape=(1, 8, 8), batch_size=1, iterations=200,
                          tv=1e-4, restarts=1, labels=label if labels == "known" else labels,
                          generator=torch.Generator().manual_seed(1))
    assert inv.x.shape == (1, 1, 8, 8) and 0.0 <= inv.x.min() and inv.x.max() <= 1.0
    assert psnr(inv.x, target).item() > 30.0
    assert inv.labels.tolist() == label.tolist()
    assert inv.cosine[inv.best].item() > 0.999


def test_idlg_label_inference(digits):
    x, y = digits
    model, spec, th = tiny(3)
    for i in range(20):
        g = dummy_gradient(model, spec, th, x[i:i + 1], y[i:i + 1])
        assert infer_label(g, spec, 10) == int(y[i])
    with pytest.raises(ValueError, match="batch_size = 1"):
        invert_gradient(model, spec, th, g, shape=(1, 8, 8), batch_size=2, iterations=1,
                        labels="infer")


def test_loop_and_vmap_strategies_compute_the_same_step(digits):
    x, y = digits
    model, spec, th = tiny()
    g = dummy_gradient(model, spec, th, x[:16], y[:16]).detach()
    xs = torch.rand(3, 4, 1, 8, 8)
    for soft in (True, False):
        ys = torch.randn(3, 4, 10) if soft else torch.randint(10, (3, 4))
        fl, vl = _objective_fns(model, spec, th, g, 0.02, soft, "loop")
        fv, vv = _objective_fns(model, spec, th, g, 0.02, soft, "vmap")
        a, b = fl(xs, ys), fv(xs, ys)
        for u, v in zip(a, b):
            if u is not None:
                torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(vl(xs, ys)[0], vv(xs, ys)[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vl(xs, ys)[0], a[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", models.available())
def test_inversion_runs_on_every_fedlib_model(name):
    torch.manual_seed(0)
    model = models.build(name, width=0.1 if "cifar" in name or name == "romoa-mnist" else 1.0)
    spec, th = ParamSpec.of(model), flatten_module(model)
    shape, C = models.input_shape(name), spec.shapes[-1][0]
    g = dummy_gradient(model, spec, th, torch.rand(4, *shape), torch.randint(C, (4,))).detach()
    box = (0.0, 1.0) if len(shape) == 3 else (-math.inf, math.inf)
    for strategy in ("loop", "vmap"):
        inv = invert_gradient(model, spec, th, g, shape=shape, batch_size=2, iterations=2,
                              restarts=2, strategy=strategy, box=box)
        assert inv.x.shape == (2, *shape) and inv.label_probs.shape == (2, C)
        assert torch.isfinite(inv.loss).all() and torch.isfinite(inv.x).all()


def test_restarts_keep_the_best_and_the_batch_is_boxed(digits):
    x, y = digits
    model, spec, th = tiny()
    g = dummy_gradient(model, spec, th, x[:4], y[:4]).detach()
    inv = invert_gradient(model, spec, th, g, shape=(1, 8, 8), batch_size=4, iterations=30,
                          restarts=3, strategy="vmap", box=(0.0, 1.0), init="rand")
    assert inv.loss.shape == (3,) and inv.best == int(inv.loss.argmin())
    assert inv.x.shape == (4, 1, 8, 8) and inv.label_probs.shape == (4, 10)
    assert inv.x.min() >= 0.0 and inv.x.max() <= 1.0
    torch.testing.assert_close(inv.label_probs.sum(-1), torch.ones(4))
    # more iterations fit better
    longer = invert_gradient(model, spec, th, g, shape=(1, 8, 8), batch_size=4, iterations=150,
                             restarts=3, init="rand")
    assert longer.loss.min() < inv.loss.min()


def test_inversion_rejects_bad_input(digits):
    x, y = digits
    model, spec, th = tiny()
    g = dummy_gradient(model, spec, th, x[:4], y[:4]).detach()
    kw = dict(shape=(1, 8, 8), batch_size=2, iterations=1)
    with pytest.raises(ValueError, match="zero"):
        invert_gradient(model, spec, th, torch.zeros_like(g), **kw)
    with pytest.raises(ValueError, match="finite"):
        invert_gradient(model, spec, th, g * float("nan"), **kw)
    with pytest.raises(ValueError, match="both be"):
        invert_gradient(model, spec, th, g[:-1], **kw)
    with pytest.raises(ValueError, match="strategy"):
        invert_gradient(model, spec, th, g, strategy="magic", **kw)
    with pytest.raises(ValueError, match="labels"):
        invert_gradient(model, spec, th, g, labels="hard", **kw)
    with pytest.raises(ValueError, match="known labels"):
        invert_gradient(model, spec, th, g, labels=torch.tensor([1, 2, 3]), **kw)


# ----------------------------------------------------------------- denoising autoencoder
def test_autoencoder_has_the_papers_size_and_lowers_the_error_on_noisy_inputs(digits):
    x, _ = digits
    assert sum(p.numel() for p in DenoisingAutoencoder().parameters()) == 28_353
    train, test = x[:1200], x[1200:]
    dae = train_denoiser(train, epochs=12, lr=3e-3, batch_size=64, seed=0)
    noisy = add_noise(test, 0.3, torch.Generator().manual_seed(7))
    assert noisy.min() >= 0 and noisy.max() <= 1
    before = ((noisy - test) ** 2).mean().item()
    after = ((denoise(dae, noisy) - test) ** 2).mean().item()
    assert after < 0.8 * before, (before, after)
    with pytest.raises(ValueError, match="divisible by 4"):
        dae(torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_denoiser(2 * train, epochs=1)


# ----------------------------------------------------------------- quality measures
def test_psnr_ssim_and_nearest(digits):
    x, _ = digits
    a = torch.zeros(2, 1, 8, 8)
    assert psnr(a, a + 0.1).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    torch.testing.assert_close(ssim(x[:5], x[:5]), torch.ones(5))
    noisy = add_noise(x[:5], 0.3, torch.Generator().manual_seed(0))
    assert (ssim(noisy, x[:5]) < 0.95).all()
    pool = x[:300]
    idx = nearest(x[[10, 250, 7]] + 0.001, pool)
    assert idx.tolist() == [10, 250, 7]
    q = reconstruction_quality(x[[10, 250]], pool)
    assert (q["psnr"] > 60).all() and q["ssim"].tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        psnr(a, torch.zeros(3, 1, 8, 8))


def test_classifier_accuracy_beats_chance_on_real_digits(digits):
    x, y = digits
    acc = classifier_accuracy(x[:300], y[:300], x[1400:], y[1400:], model="digits-cnn",
                              epochs=15, lr=3e-3)
    assert acc > 0.6
    shuffled = classifier_accuracy(x[:300], y[:300][torch.randperm(300)], x[1400:], y[1400:],
                                   model="digits-cnn", epochs=15, lr=3e-3)
    assert shuffled < acc


# ----------------------------------------------------------------- distribution learner
def _event(t, theta, nxt, malicious, lr=0.1):
    n = len(malicious)
    return RoundEvent(round=t, theta_shared=theta, theta_before=theta, theta_after=nxt,
                      uploads=torch.zeros(n, theta.numel()), client_ids=torch.arange(n),
                      malicious=torch.tensor(malicious), sync=True, lr=lr)


@pytest.mark.parametrize("invert_at", ["previous", "current"])
def test_learner_follows_algorithm_2_on_hand_built_events(digits, invert_at):
    x, y = digits
    model, spec, th0 = tiny()
    thetas = [th0 + 0.01 * k * torch.linspace(-1, 1, th0.numel()) ** (k + 1) for k in range(7)]
    learner = DistributionLearner(model, x[:20], y[:20], rounds=5, batch_size=3, iterations=4,
                                  denoiser=None, invert_at=invert_at)
    attackers = [True, False, True, True, False, True, True]   # sampled in rounds 0, 2, 3, 5, 6
    for t in range(7):
        nxt = thetas[t + 1] if t < 6 else thetas[t]
        learner.on_round(_event(t, thetas[t], nxt, [attackers[t], False]))
        if t == 2:
            torch.testing.assert_close(learner.aggregate_gradient,
                                       (thetas[0] - thetas[2]) / (0.1 * 2))
            expected = thetas[0] if invert_at == "previous" else thetas[2]
            assert torch.equal(learner.inversion_point, expected)
    # no ḡ before the second attacker round (0, 1); rounds 2, 3, 4 invert; τ_E = 5 stops at 5
    assert [r["round"] for r in learner.log] == [2, 3, 4]
    assert [r["fresh_gradient"] for r in learner.log] == [True, True, False]
    assert [(r["t_prev"], r["t"]) for r in learner.log] == [(0, 2), (2, 3), (2, 3)]
    torch.testing.assert_close(learner.aggregate_gradient, (thetas[2] - thetas[3]) / 0.1)
    xs, ys = learner.dataset()
    assert xs.shape == (20 + 9, 1, 8, 8) and ys.shape == (29,) and len(learner) == 29
    assert torch.equal(xs[:20], x[:20])
    assert learner.reconstructions()[0].shape == (9, 1, 8, 8)


def test_learner_on_a_real_engine_run_sees_the_mean_gradient(digits):
    cfg = dict(dataset="digits", model="digits-cnn", num_clients=8, clients_per_round=4,
               num_attackers=4, rounds=6, lr=0.1, batch_size=16, eval_every=6, device="cpu",
               seed=1)
    task = runs.build_task(runs.RunConfig.from_dict(cfg))
    xr, yr = attacker_samples(task, 4, m=40, seed=0)
    assert len(xr) == 40
    pool = task.x_train[torch.cat([task.clients[i] for i in range(4)])]
    assert torch.equal(pool[nearest(xr, pool)], xr)          # drawn from the attackers' data
    learner = DistributionLearner(task.model, xr, yr, rounds=6, batch_size=2, iterations=3,
                                  denoiser="train", denoiser_epochs=1)
    events = []
    runs.run(cfg, cache=False, progress=False, callbacks=[learner.on_round, events.append])
    seen = [e.round for e in events if e.malicious.any()]
    assert len(seen) >= 2 and learner.log
    last, prev = seen[-1], seen[-2]
    # ḡ = (θ^{t_prev} − θ^{t}) / (η (t − t_prev)) = the mean of the uploads over the window / η
    mean_update = torch.stack([events[t].uploads.mean(0) for t in range(prev, last)]).sum(0)
    torch.testing.assert_close(learner.aggregate_gradient, mean_update / (0.1 * (last - prev)),
                               rtol=1e-4, atol=1e-6)
    assert len(learner) == 40 + 2 * len(learner.log)
    x_l, _ = learner.dataset()
    assert x_l.min() >= 0 and x_l.max() <= 1


def test_shared_noise_changes_the_model_the_clients_receive():
    cfg = dict(dataset="digits", model="digits-cnn", num_clients=6, clients_per_round=3,
               rounds=3, lr=0.1, batch_size=16, eval_every=3, device="cpu", seed=0)
    for noise in (0.0, 0.01):
        events = []
        runs.run(dict(cfg, shared_noise=noise), cache=False, progress=False,
                 callbacks=[events.append])
        assert len(events) == 3
        for e in events:
            diff = e.theta_shared - e.theta_before
            if noise == 0:
                assert torch.equal(e.theta_shared, e.theta_before)
            else:
                assert (diff != 0).float().mean() > 0.99
                # Laplace(0, b): E|noise| = b
                assert diff.abs().mean().item() == pytest.approx(noise, rel=0.15)
                # the clients trained from the noisy model: θ_after = θ_before − mean(θ_shared − θᵢ)
                torch.testing.assert_close(e.theta_after, e.theta_before - e.uploads.mean(0))


def test_denoiser_and_learned_set_classifier_leave_the_global_rng_alone():
    from fedlib.inversion.autoencoder import train_denoiser
    from fedlib.inversion.quality import classifier_accuracy
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    images = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = train_denoiser(x, epochs=1, batch_size=3, hidden=4, seed=5)
    classifier_accuracy(images[:6], y, images[6:], y[:4], epochs=1, batch_size=3)
    assert torch.equal(torch.get_rng_state(), before)
    b = train_denoiser(x, epochs=1, batch_size=3, hidden=4, seed=5)    # and still seeded
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
