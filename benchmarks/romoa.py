"""Romoa's server cost per iteration vs one participant's local SGD step.

The budget: on the Romoa MNIST CNN (d = 3,382,346) with n = 10 participants, the
server's work per iteration (updating the sanitizing factors, plus the sanitized aggregation
at a sync point) should cost no more than one participant's local step (batch 64).

    .venv/bin/python benchmarks/romoa.py [--n 10] [--reps 7] [--width 1.0] [--steps 4]

The two timings are interleaved (local step, server iteration, local step, …) so that load
from other processes on a shared machine affects both alike; medians are reported, with a
per-stage breakdown of the server iteration. The updates are real: each participant takes
``--steps`` SGD steps (lr 0.01) on its own random minibatches from the initial model, so the
selection (Eq. 4) and the similarity measurements see realistic paths.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fedlib.context import RoundContext
from fedlib.flat import ParamSpec
from fedlib.romoa import Romoa


def romoa_mnist_cnn(width: float = 1.0) -> nn.Module:
    """The Romoa appendix Fig. 9 CNN, from ``fedlib.models`` when available, else plain torch."""
    try:
        from fedlib import models
        return models.build("romoa-mnist", width=width)
    except Exception:  # fedlib.models not there yet: the same architecture by hand
        c = max(1, round(64 * width))
        h = max(1, round(128 * width))
        return nn.Sequential(nn.Conv2d(1, c, 5), nn.ReLU(), nn.Conv2d(c, c, 5), nn.ReLU(),
                             nn.Dropout(0.25), nn.Flatten(), nn.Linear(c * 20 * 20, h), nn.ReLU(),
                             nn.Dropout(0.5), nn.Linear(h, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="participants")
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions (medians)")
    ap.add_argument("--width", type=float, default=1.0, help="CNN width multiplier")
    ap.add_argument("--steps", type=int, default=4, help="local steps behind each update (τ)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for both timings (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = romoa_mnist_cnn(args.width).to(dev)
    spec = ParamSpec.of(model)
    d, n = spec.dim, args.n
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xb = torch.rand(args.batch, 1, 28, 28, device=dev)
    yb = torch.randint(0, 10, (args.batch,), device=dev)

    def local_step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()

    # Real paths: each participant's `steps` SGD steps from θ on its own random batches.
    states = []
    for _ in range(n):
        with torch.no_grad():
            for p, v in zip(model.parameters(), spec.unflatten(theta).values()):
                p.copy_(v)
        for _ in range(args.steps):
            xb.uniform_()
            yb.random_(0, 10)
            local_step()
        states.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    updates = theta.unsqueeze(0) - torch.stack(states)
    print(f"Romoa MNIST CNN (width {args.width}): d = {d:,}, n = {n}, device {dev}, "
          f"torch threads {torch.get_num_threads()}")

    rows = []
    for reading in ("literal", "calibrated"):
        agg = Romoa(reading)
        ctx = RoundContext(round=0, theta=theta, spec=spec, lr=0.01, sync=False)
        sync_ctx = RoundContext(round=0, theta=theta, spec=spec, lr=0.01, sync=True)
        agg.observe(updates, ctx)                 # warm-up (allocations, sign table)
        agg(updates, sync_ctx)
        local, observe, sync = [], [], []
        cpu = {"local": 0.0, "observe": 0.0, "sync": 0.0}
        agg._profile = {}

        def timed(fn, store, key):
            t, c = time.perf_counter(), time.process_time()
            fn()
            store.append(time.perf_counter() - t)
            cpu[key] += time.process_time() - c

        for _ in range(args.reps):
            timed(local_step, local, "local")
            timed(lambda: agg.observe(updates, ctx), observe, "observe")
            timed(local_step, local, "local")
            timed(lambda: (agg(updates, sync_ctx), agg.weights), sync, "sync")
        prof = {k: v / (2 * args.reps) for k, v in agg._profile.items()}
        agg._profile = None
        lm, om, sm = (statistics.median(v) for v in (local, observe, sync))
        cpu_ratio = (cpu["observe"] / args.reps) / (cpu["local"] / (2 * args.reps))
        rows.append((reading, lm, om, sm, cpu_ratio, agg.report()["selected_fraction"], prof))

    print(f"\n{'reading':<11} {'local step':>11} {'lookahead':>10} {'sync':>9} "
          f"{'ratio':>6} {'ratio@sync':>10} {'cpu ratio':>9} {'|U|/d':>6}")
    for reading, lm, om, sm, cr, frac, _ in rows:
        print(f"{reading:<11} {lm*1e3:9.0f}ms {om*1e3:8.0f}ms {sm*1e3:7.0f}ms "
              f"{om/lm:6.2f} {sm/lm:10.2f} {cr:9.2f} {frac:6.3f}")
    print("\nratio = median wall time of one server lookahead iteration / one participant's "
          "local step (budget ≤ 1);\nratio@sync adds the sanitized aggregation of a sync point "
          "and the per-participant weights;\ncpu ratio is the same ratio in process CPU time "
          "(less sensitive to other load on a shared machine).")
    for reading, *_, prof in rows:
        parts = ", ".join(f"{k} {v*1e3:.0f}" for k, v in prof.items())
        print(f"{reading} stages (ms, mean wall): {parts}")


if __name__ == "__main__":
    main()
