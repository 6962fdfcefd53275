"""Replica-batched federations vs separate ones, as ratios measured in one run.

Settings (L2A App. E.1's round: 10 sampled clients × 1 SGD step × batch 128, mean rule):
* synthetic 2-D set with L2A's 28-parameter MLP, B ∈ {1, 16, 64, 256} replicas;
* MNIST-shaped random data with the L2A CNN (710,218 parameters), B ∈ {1, 8, 16}.

For each B it prints the time of one round of ``Federation(..., seeds=range(B))``, the time B
separate single federations take for the same rounds (B × one single round, measured), their
ratio (the speed-up), and the ratio of the batched round to its arithmetic core (the vmapped
local SGD alone on pre-drawn batches: the rest is sampling, aggregation and bookkeeping).
It also compares one single federation's round with a bare engine loop doing the same work
(framework overhead of the single-replica path).

Usage: ``python benchmarks/federation.py [--rounds 5] [--cnn-width 1.0] [--device cpu]``
"""

from __future__ import annotations

import argparse
import time

import torch

from fedlib import engine, models
from fedlib.flat import ParamSpec
from fedlib.federation import Federation
from fedlib.protocols import draw_clients

SYNTHETIC = dict(dataset="synthetic", model="synthetic-mlp", num_clients=100, clients_per_round=10,
                 lr=0.05, batch_size=128, rounds=10)
CNN = dict(dataset="digits", model="l2a-mnist", num_clients=20, clients_per_round=10, lr=0.01,
           batch_size=128, rounds=10)


def mnist_shaped(cfg: dict, device: str) -> engine.Task:
    """The L2A CNN on random 28×28 inputs (timing does not depend on pixel values)."""
    g = torch.Generator().manual_seed(0)
    n = 20 * 256
    x = torch.rand(n, 1, 28, 28, generator=g).to(device)
    y = torch.randint(10, (n,), generator=g).to(device)
    model = models.build("l2a-mnist", width=cfg.get("width", 1.0)).to(device)
    clients = list(torch.arange(n, device=device).chunk(20))
    return engine.Task(model, ParamSpec.of(model), x, y, x[:1000], y[:1000], clients, 10,
                       torch.device(device))


def per_round(fed: Federation, rounds: int) -> float:
    """Seconds per step, after one warm-up step."""
    fed.step()
    if fed.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(rounds):
        fed.step()
    if fed.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / rounds


def core(fed: Federation, rounds: int) -> float:
    """Seconds of the arithmetic core of one batched round: vmapped local SGD on fixed batches."""
    ids = fed.next_clients()
    starts = fed.theta.unsqueeze(1).expand(-1, ids.shape[1], -1)
    pool = fed._pooled()[0]
    batches = fed.pooled_batches(ids, 1, torch.ones(ids.shape, dtype=torch.bool))
    flat = starts.reshape(-1, starts.shape[-1])
    strategy = fed.strategy if len(fed.seeds) > 1 else engine.resolve_strategy("auto", fed.device)
    engine.local_sgd(pool, flat, batches, fed.cfg.lr, strategy)
    start = time.perf_counter()
    for _ in range(rounds):
        engine.local_sgd(pool, flat, batches, fed.cfg.lr, strategy)
    return (time.perf_counter() - start) / rounds


def bare_loop(fed: Federation, rounds: int) -> float:
    """Seconds per round of the same work written as a bare engine loop (one replica, mean)."""
    task, cfg, theta = fed.task, fed.cfg, fed.theta[0]
    w = cfg.clients_per_round
    start = time.perf_counter()
    for t in range(rounds):
        ids = draw_clients([cfg.seed], [t], cfg.num_clients, w)[0]
        batches = engine.sample_batches(task, ids, t, 1, cfg.batch_size, cfg.seed)
        local = engine.local_sgd(task, theta.expand(w, -1), batches, cfg.lr, cfg.strategy)
        theta = theta - (theta.unsqueeze(0) - local).mean(0)
    return (time.perf_counter() - start) / rounds


def compare(label: str, cfg: dict, sizes: list[int], rounds: int, task_fn=None) -> None:
    """Print one table: batched vs separate per B, and the single path vs a bare loop."""
    print(f"\n{label}")

    def make(B: int) -> Federation:
        if task_fn is None:
            return Federation.from_config(cfg, seeds=list(range(B)))
        return Federation(task_fn(), cfg, seeds=list(range(B)))

    single = per_round(make(1), rounds)
    print(f"  B=1: {single * 1e3:8.2f} ms/round; bare engine loop "
          f"{bare_loop(make(1), rounds) * 1e3:8.2f} ms/round")
    for B in sizes:
        fed = make(B)
        batched = per_round(fed, rounds)
        arithmetic = core(fed, max(1, rounds // 2))
        print(f"  B={B:<4d} batched {batched * 1e3:9.2f} ms/round ({batched / B * 1e3:7.3f} ms per "
              f"replica-round, strategy {fed.strategy}); {B} separate {single * B * 1e3:9.2f} ms; "
              f"speed-up {single * B / batched:6.1f}x; batched round / arithmetic core "
              f"{batched / arithmetic:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cnn-width", type=float, default=1.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-cnn", action="store_true")
    args = ap.parse_args()
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    compare("synthetic 2-D set, L2A MLP (28 parameters), 10 clients x batch 128",
            dict(SYNTHETIC, device=args.device), [16, 64, 256], args.rounds)
    if not args.skip_cnn:
        cnn = dict(CNN, width=args.cnn_width, device=args.device)
        compare(f"L2A MNIST CNN (width {args.cnn_width}), 10 clients x batch 128", cnn, [8, 16],
                max(1, args.rounds // 2), task_fn=lambda: mnist_shaped(cnn, args.device))


if __name__ == "__main__":
    main()
