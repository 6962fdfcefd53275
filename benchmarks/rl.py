"""Throughput of the attackers' simulator and of policy learning (L2A §4.3, App. E.1–E.2).

Measures, in one run:

* simulated FL rounds per second: ``PoisoningEnv`` (one replica) and ``PoisoningVecEnv`` at
  B ∈ {16, 64, 256}, for the synthetic MLP with the ``"full"`` action under Krum, and for the
  L2A MNIST CNN (``--mnist``, random 28×28 data: timing does not depend on pixel values) with the
  ``"gamma_E"`` action at E = 10 (the middle of Krum's range);
* TD3 env steps per second (App. E.1 settings, ``gradient_steps=-1``: one gradient step per env
  step, whatever the number of replicas) and the wall time of the synthetic policy (8,000 steps by
  default; goal: under a minute on two CPU cores), with the machine's load average before and after
  (the timings are only comparable at equal load), the replicas used and the trained policy's mean
  return beside a random policy's. ``--profile`` adds where the first run's time went (cProfile,
  which slows it). The paper's reference: ≈ 0.05 s per simulated round with 10 clients on a P100,
  ≤ 8 h of policy learning.

Usage: ``python benchmarks/rl.py [--threads 2] [--steps 8000] [--num-envs 8] [--lrs 1e-3,1e-7]
[--profile] [--mnist] [--skip-throughput] [--skip-train]``
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
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


def load() -> str:
    """The 1-, 5- and 15-minute load averages (other jobs on the machine slow every timing)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def mean_return(cfg: EnvConfig, act, episodes: int = 3, seed: int = 100) -> float:
    """Mean return of ``act`` over ``episodes`` simulated episodes (the first reset seeded)."""
    env = PoisoningEnv(cfg)
    ret = 0.0
    for e in range(episodes):
        obs, _ = env.reset(seed=seed) if e == 0 else env.reset()
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(act(obs))
            ret += r / episodes
            done = term or trunc
    return ret


def breakdown(prof: cProfile.Profile, wall: float) -> str:
    """Seconds in TD3's gradient steps, in the simulator's steps and in the rest (from cProfile)."""
    parts = {"gradient steps (TD3.train)": ("td3.py", "train"),
             "simulator (PoisoningVecEnv.step_wait)": ("vecenv.py", "step_wait"),
             "rollouts incl. simulator (collect_rollouts)": ("off_policy_algorithm.py",
                                                             "collect_rollouts")}
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out = []
    for label, (file, func) in parts.items():
        cum = sum(v[3] for k, v in stats.items() if k[0].endswith(file) and k[2] == func)
        out.append(f"{label} {cum:.1f} s")
    return f"profile of {wall:.1f} s (slowed by cProfile): " + "; ".join(out)


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
    ap.add_argument("--num-envs", type=int, default=None,
                    help="replicas of the TD3 runs (default: train_policy's)")
    ap.add_argument("--lrs", default="1e-3,1e-7", help="policy learning rates to train with")
    ap.add_argument("--profile", action="store_true", help="cProfile the first TD3 run")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cores, load {load()}")
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_train:
        policy_learning(args)


def throughput(args: argparse.Namespace) -> None:
    """Simulated FL rounds per second, one env and B replicas."""
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


def policy_learning(args: argparse.Namespace) -> None:
    """Wall time of the synthetic policy (one run per lr) and its return beside a random policy."""
    from fedlib.rl.train import default_num_envs

    cfg = synthetic_env_config(aggregator="krum", num_attackers=40, horizon=200)
    envs = args.num_envs or default_num_envs("td3", args.steps, 1000)
    for i, lr in enumerate(float(x) for x in args.lrs.split(",")):
        prof = cProfile.Profile() if args.profile and i == 0 else None
        before = load()
        start, cpu = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        policy = train_policy(cfg, steps=args.steps, seed=0, checkpoint_every=1000,
                              lr=lr, num_envs=envs, progress=False)
        if prof is not None:
            prof.disable()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        ret = mean_return(cfg, policy.act)
        print(f"TD3 synthetic Krum (M = 40, H = 200), lr {lr:g}, {envs} replicas: {args.steps} "
              f"steps in {wall:.1f} s wall ({cpu:.1f} s CPU) = {args.steps / wall:.0f} steps/s "
              f"(load before {before}, after {load()}); mean return {ret:.2f}")
        if prof is not None:
            print(breakdown(prof, wall))
    rng = np.random.default_rng(0)
    ret = mean_return(cfg, lambda obs: rng.uniform(-1, 1, 28).astype(np.float32))
    print(f"random policy: mean return {ret:.2f}")


if __name__ == "__main__":
    main()
