"""Inverting-gradients speed: iterations per second vs the L2A paper's ≈ 100 it/s.

L2A appendix E.2: "distribution learning takes around 100 seconds to reconstruct a batch of
32 images" at 10,000 iterations on a P100 GPU, i.e. about 100 iterations/s for B′ = 32 on the
L2A MNIST CNN (710,218 parameters). This script times :func:`fedlib.inversion.invert_gradient`
on the same model and batch (a real gradient of 128 random images) on the CPU and, when one is
present, the GPU, for each strategy ("loop", "vmap") and number of restarts. The rate is
measured as (n₂ − n₁)/(T₂ − T₁) from two runs of n₁ and n₂ iterations, so set-up and the final
evaluation cancel. "restart-it/s" counts every restart's iteration (batched restarts are extra
candidate batches at the same wall time). Goal on a modern GPU: ≥ 5× the paper, 500 it/s.

Usage: ``python benchmarks/inversion.py [--width 1.0] [--batch-size 32] [--restarts 1 4]
[--strategies loop vmap] [--devices cpu cuda] [--threads N]``
"""

from __future__ import annotations

import argparse
import time

import torch

from fedlib import models
from fedlib.flat import ParamSpec, flatten_module
from fedlib.inversion import dummy_gradient, invert_gradient

PAPER_RATE = 10_000 / 100.0   # iterations per second, B′ = 32, P100 (L2A appendix E.2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(width: float, batch_size: int, restarts: int, strategy: str, device: torch.device,
         iterations: tuple[int, int]) -> float:
    """Iterations per second of one inversion (excluding set-up), on ``device``."""
    torch.manual_seed(0)
    model = models.build("l2a-mnist", width=width).to(device)
    spec = ParamSpec.of(model)
    theta = flatten_module(model).to(device)
    x = torch.rand(128, 1, 28, 28, device=device)
    y = torch.randint(10, (128,), device=device)
    target = dummy_gradient(model, spec, theta, x, y).detach()

    def timed(n: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        invert_gradient(model, spec, theta, target, shape=(1, 28, 28), batch_size=batch_size,
                        iterations=n, restarts=restarts, strategy=strategy)
        _sync(device)
        return time.perf_counter() - t0

    timed(2)                                     # warm-up (allocations, kernels, autotuning)
    n1, n2 = iterations
    t1, t2 = timed(n1), timed(n2)
    return (n2 - n1) / max(t2 - t1, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0, help="L2A CNN width (1 = the paper's)")
    ap.add_argument("--batch-size", type=int, default=32, help="B′ dummy images")
    ap.add_argument("--restarts", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--strategies", nargs="+", default=["loop", "vmap"])
    ap.add_argument("--devices", nargs="+", default=None,
                    help="default: cpu, and cuda if present")
    ap.add_argument("--cpu-iterations", type=int, nargs=2, default=[5, 25])
    ap.add_argument("--gpu-iterations", type=int, nargs=2, default=[100, 1100])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"L2A CNN width {args.width}, B′ = {args.batch_size}; "
          f"paper: {PAPER_RATE:.0f} it/s (P100)")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"{'device':<6} {'strategy':<8} {'restarts':>8} {'it/s':>9} {'restart-it/s':>13} "
          f"{'vs paper':>9} {'10k its (s)':>12}")
    for dev in devices:
        device = torch.device(dev)
        its = args.gpu_iterations if device.type == "cuda" else args.cpu_iterations
        for restarts in args.restarts:
            for strategy in args.strategies:
                if strategy == "vmap" and restarts == 1:
                    continue
                r = rate(args.width, args.batch_size, restarts, strategy, device, tuple(its))
                print(f"{dev:<6} {strategy:<8} {restarts:>8} {r:>9.1f} {r * restarts:>13.1f} "
                      f"{r / PAPER_RATE:>8.2f}× {10_000 / r:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
