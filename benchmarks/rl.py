"""Throughput of the attackers' simulator and of policy learning (L2A §4.3, App. E.1–E.2).

Measures, in one run:

* simulated FL rounds per second: ``PoisoningEnv`` (one replica) and ``PoisoningVecEnv`` at
  B ∈ {16, 64, 256}, for the synthetic MLP with the ``"full"`` action under Krum, and for the
  L2A MNIST CNN (``--mnist``, random 28×28 data: timing does not depend on pixel values) with the
  ``"gamma_E"`` action at E = 10 (the middle of Krum's range);
* TD3 env steps per second (App. E.1 settings, ``gradient_steps=-1``: one gradient step per env
  step) and the wall time of the synthetic policy (8,000 steps by default; goal: under a minute on
  two CPU cores). The paper's reference: ≈ 0.05 s per simulated round with 10 clients on a P100,
  ≤ 8 h of policy learning.

Usage: ``python benchmarks/rl.py [--threads 1] [--steps 8000] [--mnist] [--skip-train]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedlib.rl import EnvConfig, PoisoningEnv, PoisoningVecEnv, synthetic_env_config, train_policy


def rounds_per_second(env_factory, batch: int | None, steps: int, action: np.ndarray) -> float:
    """Simulated FL rounds per second (every replica's rounds counted)."""
    env = env_factory(batch)
    if batch is None:
        env.reset(seed=0)
        r0 = env.sim.round[0]
        start = time.perf_counter()
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(action)
            if term or trunc:
                env.reset()
    else:
        env.reset()
        r0 = sum(env.sim.round)
        start = time.perf_counter()
        for _ in range(steps):
            env.step(np.repeat(action[None], batch, 0))
    elapsed = time.perf_counter() - start
    rounds = (env.sim.round[0] if batch is None else sum(env.sim.round)) - r0
    return max(rounds, 1) / elapsed


def mnist_config() -> EnvConfig:
    """The L2A MNIST CNN with random data (P̃ = 1,000 images), Krum, γ/E action."""
    from fedlib import models
    from fedlib.flat import flatten_module

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 1, 28, 28, generator=g)
    y = torch.randint(10, (1000,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theta0 = flatten_module(models.build("l2a-mnist"))
    return EnvConfig(data=(x, y), holdout=(x[:200], y[:200]), theta0=theta0, model="l2a-mnist",
                     aggregator="krum", action="gamma_E", horizon=1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--steps", type=int, default=8000, help="TD3 steps of the synthetic policy")
    ap.add_argument("--env-steps", type=int, default=200, help="env steps per throughput point")
    ap.add_argument("--batches", default="16,64,256")
    ap.add_argument("--mnist", action="store_true", help="also time the L2A MNIST CNN")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    settings = [("synthetic MLP, full action, Krum", synthetic_env_config(aggregator="krum"),
                 np.zeros(28, np.float32))]
    if args.mnist:
        settings.append(("L2A MNIST CNN, gamma_E (E = 10), Krum", mnist_config(),
                         np.array([0.0, 0.0], np.float32)))
    print(f"{'setting':42} {'B':>5} {'rounds/s':>10} {'ms/round':>9}")
    for name, cfg, action in settings:
        mnist = name.startswith("L2A")
        for batch in [None, *[int(b) for b in args.batches.split(",")]]:
            if mnist and batch is not None and batch > 16:
                continue                                   # minutes per point on a CPU
            def factory(b, cfg=cfg):
                return PoisoningEnv(cfg) if b is None else PoisoningVecEnv(cfg, b)
            steps = 10 if mnist else (args.env_steps if batch is None
                                      else max(4, 4 * args.env_steps // batch))
            rps = rounds_per_second(factory, batch, steps, action)
            print(f"{name:42} {batch or 1:>5} {rps:>10.1f} {1000 / rps:>9.2f}")
    if args.skip_train:
        return
    cfg = synthetic_env_config(aggregator="krum", num_attackers=40, horizon=200)
    for lr in (1e-3, 1e-7):
        start, cpu = time.perf_counter(), time.process_time()
        policy = train_policy(cfg, steps=args.steps, seed=0, checkpoint_every=1000,
                              lr=lr, progress=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        env = PoisoningEnv(cfg)
        ret = 0.0
        for e in range(3):
            obs, _ = env.reset(seed=100) if e == 0 else env.reset()
            done = False
            while not done:
                obs, r, term, trunc, _ = env.step(policy.act(obs))
                ret += r / 3
                done = term or trunc
        print(f"TD3 synthetic Krum (M = 40, H = 200), lr {lr:g}: {args.steps} steps in "
              f"{wall:.1f} s wall ({cpu:.1f} s CPU) = {args.steps / wall:.0f} steps/s; "
              f"mean return {ret:.2f}")
    rng = np.random.default_rng(0)
    env = PoisoningEnv(cfg)
    ret = 0.0
    for e in range(3):
        obs, _ = env.reset(seed=100) if e == 0 else env.reset()
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(rng.uniform(-1, 1, 28).astype(np.float32))
            ret += r / 3
            done = term or trunc
    print(f"random policy: mean return {ret:.2f}")


if __name__ == "__main__":
    main()
