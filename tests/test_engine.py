"""Local training: the vectorised and sequential strategies agree; per-client streams."""

import torch

from fedlib import engine, models
from fedlib.flat import ParamSpec, flatten_module


def tiny_task(n_clients=4, n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(10, (n,), generator=g)
    torch.manual_seed(seed)
    model = models.build("digits-cnn")
    clients = list(torch.arange(n).chunk(n_clients))
    return engine.Task(model=model, spec=ParamSpec.of(model), x_train=x, y_train=y, x_test=x[:50],
                       y_test=y[:50], clients=clients, num_classes=10, device=torch.device("cpu"))


def test_vmap_equals_sequential():
    """Same batches, same math: equal to float32 round-off (rtol 1e-5, atol 1e-6)."""
    task = tiny_task()
    theta = flatten_module(task.model)
    ids = torch.tensor([0, 1, 3])
    batches = engine.sample_batches(task, ids, round=5, steps=3, batch_size=16, seed=7)
    start = theta.expand(3, -1) + 0.01 * torch.randn(3, theta.numel())
    seq = engine.local_sgd(task, start, batches, lr=0.1, strategy="sequential")
    vec = engine.local_sgd(task, start, batches, lr=0.1, strategy="vmap")
    assert not torch.equal(seq, start)
    torch.testing.assert_close(vec, seq, rtol=1e-5, atol=1e-6)


def test_auto_strategy_is_sequential_on_cpu():
    assert engine.resolve_strategy("auto", torch.device("cpu")) == "sequential"
    assert engine.resolve_strategy("auto", torch.device("cuda")) == "vmap"


def test_client_batches_do_not_depend_on_who_else_is_sampled():
    task = tiny_task()
    a = engine.sample_batches(task, [1, 2], round=3, steps=2, batch_size=8, seed=0)
    b = engine.sample_batches(task, [0, 2, 3], round=3, steps=2, batch_size=8, seed=0)
    assert torch.equal(a[1], b[1])
    other = engine.sample_batches(task, [1], round=4, steps=2, batch_size=8, seed=0)
    assert not torch.equal(a[0], other[0])
    own = set(task.clients[2].tolist())
    assert set(b[1].flatten().tolist()) <= own
    assert len(set(b[1, 0].tolist())) == 8  # without replacement when the client has enough


def test_sgd_descends_and_ascends():
    task = tiny_task()
    theta = flatten_module(task.model)
    x, y = task.x_train[:64], task.y_train[:64]
    before = task.loss(theta, x, y).item()
    down = engine.sgd(task, theta, x, y, steps=20, lr=0.5, batch_size=64)
    up = engine.sgd(task, theta, x, y, steps=5, lr=0.5, batch_size=64, ascent=True)
    assert task.loss(down, x, y).item() < before < task.loss(up, x, y).item()


def test_evaluate_and_confidence():
    task = tiny_task()
    theta = flatten_module(task.model)
    m = engine.evaluate(task, theta, task.x_test, task.y_test)
    p = engine.predict_proba(task, theta, task.x_test)
    assert abs(m["accuracy"] - (p.argmax(1) == task.y_test).float().mean().item()) < 1e-9
    assert len(m["per_class_accuracy"]) == 10
    torch.testing.assert_close(p.sum(1), torch.ones(50))
    conf = engine.confidence(task, theta, task.x_test, task.y_test)
    assert abs(conf - p.gather(1, task.y_test[:, None]).mean().item()) < 1e-6


def test_gradient_matches_autograd():
    task = tiny_task()
    theta = flatten_module(task.model).requires_grad_(True)
    x, y = task.x_train[:32], task.y_train[:32]
    (ref,) = torch.autograd.grad(task.loss(theta, x, y), theta)
    torch.testing.assert_close(engine.gradient(task, theta.detach(), x, y), ref)
