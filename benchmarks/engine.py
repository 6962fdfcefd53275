"""Round time of each local-training strategy, as ratios to the fastest, measured in one run.

Settings:
* L2A MNIST: the L2A CNN (710,218 parameters), 10 clients × 1 SGD step × batch 128;
* Romoa MNIST: the Romoa CNN (3,382,346 parameters), 10 participants × 1 step × batch 64.

Strategies: ``sequential`` (one client after another), ``vmap`` (torch.func over clients),
``fused`` (reference point only: one forward+backward of all clients' samples through a
single model — what a round would cost if every client shared one model), and ``auto``
(the engine's default on this device). Also the cost of evaluating 10,000 test images.

Usage: ``python benchmarks/engine.py [--repeats 5] [--width 1.0]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fedlib import engine, models
from fedlib.flat import ParamSpec, flatten_module


def make_task(name: str, n_clients: int, per_client: int, device) -> engine.Task:
    """A task with random 28×28 inputs (timing does not depend on pixel values)."""
    torch.manual_seed(0)
    model = models.build(name).to(device)
    n = n_clients * per_client
    x = torch.rand(n, 1, 28, 28, device=device)
    y = torch.randint(10, (n,), device=device)
    clients = list(torch.arange(n, device=device).chunk(n_clients))
    return engine.Task(model, ParamSpec.of(model), x, y, x[:10000], y[:10000], clients, 10,
                       torch.device(device))


def timed(fn, repeats: int, device) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def bench(name: str, n_clients: int, batch: int, repeats: int, device) -> dict[str, float]:
    """Seconds per round for each strategy on one setting."""
    task = make_task(name, n_clients, 4 * batch, device)
    theta = flatten_module(task.model).to(device)
    start = theta.expand(n_clients, -1)
    batches = engine.sample_batches(task, range(n_clients), 0, 1, batch, seed=0)
    flat_idx = batches.reshape(-1)

    def fused():
        th = theta.clone().requires_grad_(True)
        loss = F.cross_entropy(task.forward(th, task.x_train[flat_idx]), task.y_train[flat_idx])
        torch.autograd.grad(loss, th)

    times = {s: timed(lambda s=s: engine.local_sgd(task, start, batches, 0.01, s), repeats, device)
             for s in ("sequential", "vmap")}
    times["fused"] = timed(fused, repeats, device)
    times["auto"] = timed(lambda: engine.local_sgd(task, start, batches, 0.01, "auto"), repeats,
                          device)
    x_eval = torch.rand(10000, 1, 28, 28, device=device)
    times["eval 10k"] = timed(lambda: engine.predict_proba(task, theta, x_eval),
                              max(1, repeats // 2), device)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"auto = {engine.resolve_strategy('auto', device)}")
    for label, name, n, b in (("L2A MNIST CNN, 10 × batch 128", "l2a-mnist", 10, 128),
                              ("Romoa MNIST CNN, 10 × batch 64", "romoa-mnist", 10, 64)):
        t = bench(name, n, b, args.repeats, device)
        rounds = {k: v for k, v in t.items() if k != "eval 10k"}
        fastest = min(rounds.values())
        print(f"\n{label}")
        for k, v in rounds.items():
            print(f"  {k:<11} {v * 1000:9.1f} ms/round   {v / fastest:5.2f}× the fastest")
        print(f"  vmap vs sequential speed-up: {t['sequential'] / t['vmap']:.2f}×")
        print(f"  evaluating 10,000 images: {t['eval 10k']:.2f} s = "
              f"{t['eval 10k'] / t['auto']:.1f} rounds")


if __name__ == "__main__":
    main()
