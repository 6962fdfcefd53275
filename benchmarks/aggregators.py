"""Time every fedlib.aggregators rule against a straightforward NumPy reference.

    .venv/bin/python benchmarks/aggregators.py            # n ∈ {10, 100} × d ∈ {1e5, 1e6}
    .venv/bin/python benchmarks/aggregators.py --quick    # small sizes, checks the script
    .venv/bin/python benchmarks/aggregators.py --device cuda --no-reference
    .venv/bin/python benchmarks/aggregators.py --threads 1 --n 100 --d 1e6
    .venv/bin/python benchmarks/aggregators.py --batched --replicas 16 256 --n 10 --d 28
    .venv/bin/python benchmarks/aggregators.py --versus-torch --threads 1 --n 100 --d 1e5

Prints a markdown table: best-of-``--repeat`` wall time of the torch rule and its process
CPU time (all threads; with ``--threads 1`` what the wall time would be on an idle core),
the NumPy reference's wall time (written here the way one would write it directly in
NumPy: np.median, np.sort, a Gram matrix, plain loops for the iterations), their ratio
(> 1: torch faster), and the largest difference between the two outputs (float32 inputs).
Goal: every rule at n = 100, d = 1e6 well under one second on a 2-core CPU. On a machine
whose cores are busy with other work, torch's two OpenMP threads can stall each other at
every parallel region (``RESULTS.md``); time with ``--threads 1`` there,
or when it is quiet.

``--versus-torch`` times Krum, multi-Krum and the geometric median against straightforward
vectorised PyTorch versions of the same definitions (cdist + full sort; an (n, d) difference
per Weiszfeld iteration), calling the two in turn (best of ``--repeat`` rounds each; wall
and process CPU time, the latter less sensitive to other processes with ``--threads 1``).
``--batched`` times replica batches: one call on (B, n, d) against B separate calls on
(n, d) (the loop a replica-batched federation avoids), and checks that the outputs agree.
"""

from __future__ import annotations

import argparse
from functools import partial
import platform
import time

import numpy as np
import torch

import fedlib.aggregators as agg

# ----------------------------------------------------------------------------- NumPy reference


def np_sq_dists(x):
    y = x - x.mean(axis=0)
    g = y @ y.T
    sq = np.diag(g)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * g, 0)
    np.fill_diagonal(d, 0)
    return d


def np_pick(d, idx, f):
    """Krum on rows idx (≥ 1 neighbour; ties: smaller total distance), as fedlib defines it."""
    sub = d[np.ix_(idx, idx)].copy()
    k = min(max(len(idx) - f - 2, 1), len(idx) - 1)
    if k == 0:
        return idx[0]
    total = sub.sum(axis=1)
    np.fill_diagonal(sub, np.inf)
    scores = np.sort(sub, axis=1)[:, :k].sum(axis=1)
    return idx[np.lexsort((total, scores))[0]]


def np_krum_scores(x, f):
    d = np_sq_dists(x)
    total = d.sum(axis=1)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, : len(x) - f - 2].sum(axis=1), total


def np_krum(x, f):
    scores, total = np_krum_scores(x, f)
    return x[np.lexsort((total, scores))[0]]


def np_multi_krum(x, f, m):
    scores, total = np_krum_scores(x, f)
    return x[np.lexsort((total, scores))[:m]].mean(axis=0)


def np_trimmed_mean(x, f):
    return np.sort(x, axis=0)[f: len(x) - f].mean(axis=0)


def np_clipped_median(x, threshold):
    scale = np.minimum(1.0, threshold / np.linalg.norm(x, axis=1))
    return np.median(x * scale[:, None], axis=0)


def np_geometric_median(x, iters, eps):
    z = x.mean(axis=0)
    for _ in range(iters):
        beta = 1.0 / np.maximum(eps, np.linalg.norm(x - z, axis=1))
        z = beta @ x / beta.sum()
    return z


def np_fltrust(x, g0):
    norms, g0n = np.linalg.norm(x, axis=1), np.linalg.norm(g0)
    trust = np.maximum(x @ g0 / (norms * g0n), 0)
    return (trust * g0n / norms) @ x / trust.sum()


def np_bulyan(x, f):
    n = len(x)
    d = np_sq_dists(x)
    left, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        best = np_pick(d, left, f)
        picked.append(best)
        left.remove(best)
    sel = x[picked]
    med = np.median(sel, axis=0)
    closest = np.argsort(np.abs(sel - med), axis=0)[: n - 4 * f]
    return np.take_along_axis(sel, closest, axis=0).mean(axis=0)


def np_centered_clipping(x, radius, iters):
    v = np.zeros(x.shape[1], dtype=x.dtype)
    for _ in range(iters):
        diff = x - v
        c = np.minimum(1.0, radius / np.linalg.norm(diff, axis=1))
        v = v + (c[:, None] * diff).mean(axis=0)
    return v


# ----------------------------------------------------------------------------- cases


def cases(n, d, gen):
    """(label, torch callable, numpy callable) for every rule at size n × d."""
    f = max(1, min(n // 5, (n - 3) // 4))  # Bulyan needs n ≥ 4f + 3
    w = torch.rand(n, generator=gen) + 0.5
    g0 = torch.randn(d, generator=gen)
    return [
        ("mean", lambda x: agg.mean(x), lambda a: a.mean(axis=0)),
        ("weighted_mean", lambda x: agg.weighted_mean(x, w.to(x.device)),
         lambda a: (w.numpy() / w.numpy().sum()) @ a),
        (f"krum f={f}", lambda x: agg.krum(x, f), lambda a: np_krum(a, f)),
        (f"multi_krum f={f} m={n - f}", lambda x: agg.multi_krum(x, f),
         lambda a: np_multi_krum(a, f, n - f)),
        ("median", lambda x: agg.median(x), lambda a: np.median(a, axis=0)),
        (f"trimmed_mean f={f}", lambda x: agg.trimmed_mean(x, f),
         lambda a: np_trimmed_mean(a, f)),
        ("clipped_median τ=2", lambda x: agg.clipped_median(x, 2.0),
         lambda a: np_clipped_median(a, 2.0)),
        ("geometric_median 10 it", lambda x: agg.geometric_median(x, 10),
         lambda a: np_geometric_median(a, 10, 1e-6)),
        ("fltrust", lambda x: agg.fltrust(x, g0.to(x.device)),
         lambda a: np_fltrust(a, g0.numpy())),
        (f"bulyan f={f}", lambda x: agg.bulyan(x, f), lambda a: np_bulyan(a, f)),
        ("centered_clipping τ=10 3 it", lambda x: agg.centered_clipping(x, 10.0, 3),
         lambda a: np_centered_clipping(a, 10.0, 3)),
    ]


# ----------------------------------------------------------------------------- PyTorch reference


def torch_krum_scores(x, f):
    """Krum scores the straightforward vectorised way: cdist, full sort, sum."""
    n = x.shape[0]
    return (torch.cdist(x, x) ** 2).sort(dim=1).values[:, 1:n - f - 1].sum(dim=1)


def torch_krum(x, f):
    return x[torch_krum_scores(x, f).argmin()]


def torch_multi_krum(x, f, m):
    return x[torch_krum_scores(x, f).argsort()[:m]].mean(dim=0)


def torch_geometric_median(x, iters=10, eps=1e-6):
    """Smoothed Weiszfeld the straightforward vectorised way: (n, d) differences per iteration."""
    z = x.mean(dim=0)
    for _ in range(iters):
        beta = 1.0 / (x - z).norm(dim=1).clamp_min(eps)
        z = (beta[:, None] * x).sum(dim=0) / beta.sum()
    return z


def run_versus_torch(args, device, sync) -> None:
    """Print fedlib's Krum, multi-Krum and geometric median against plain PyTorch versions."""
    print("| rule | n | d | fedlib s | plain torch s | torch/fedlib | cpu s fedlib | cpu s torch "
          "| cpu torch/fedlib | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = True
    for n in args.n:
        for d in (int(v) for v in args.d):
            x = torch.randn(n, d, generator=torch.Generator().manual_seed(0)).to(device)
            f = max(1, n // 5)
            rows = [(f"krum f={f}", partial(agg.krum, f=f), partial(torch_krum, f=f)),
                    (f"multi_krum f={f}", partial(agg.multi_krum, f=f),
                     partial(torch_multi_krum, f=f, m=n - f)),
                    ("geometric_median 10 it", agg.geometric_median, torch_geometric_median)]
            for label, ours, plain in rows:
                if args.rules and not any(label.startswith(r) for r in args.rules):
                    continue
                # a fresh process was seen to run its first ≈ 5 s of calls up to 50x slower
                (t_ours, c_ours, out), (t_plain, c_plain, ref) = best_times_interleaved(
                    (ours, plain), x, args.repeat, sync, warm_up_s=8.0 if first else 1.0)
                first = False
                print(f"| {label} | {n} | {d:.0e} | {t_ours:.4f} | {t_plain:.4f} | "
                      f"{t_plain / t_ours:.1f} | {c_ours:.4f} | {c_plain:.4f} | "
                      f"{c_plain / c_ours:.1f} | {float((out - ref).abs().max()):.1e} |",
                      flush=True)


def batched_cases(n):
    """(label, registry name, params) for the replica-batch timing."""
    f = max(1, min(n // 5, (n - 3) // 4))
    return [("mean", "mean", {}), (f"krum f={f}", "krum", {"f": f}),
            (f"multi_krum f={f}", "multi_krum", {"f": f}), ("median", "median", {}),
            (f"trimmed_mean f={f}", "trimmed_mean", {"f": f}),
            ("clipped_median τ=2", "clipped_median", {}),
            ("geometric_median 10 it", "geometric_median", {}), ("fltrust", "fltrust", {}),
            (f"bulyan f={f}", "bulyan", {"f": f}),
            ("centered_clipping median_norm", "centered_clipping", {})]


def time_batched(name, params, x, g0, repeat, sync):
    """(batched s, B calls s, max |difference|) of rule ``name`` on x (B, n, d)."""
    from fedlib.context import RoundContext
    from fedlib.flat import ParamSpec

    b_count, d = x.shape[0], x.shape[-1]
    spec = ParamSpec(("w",), ((d,),))

    def ctx(server):
        return RoundContext(0, torch.zeros(d), spec, 0.1, sync=False,
                            server_update=lambda: server)

    one, each = agg.get(name, **params), agg.get(name, **params)
    whole, singles = ctx(g0), [ctx(g0[b]) for b in range(b_count)]
    t_b, _, out = best_time(lambda v: one(v, whole), x, repeat, sync)
    t_l, _, outs = best_time(
        lambda v: torch.stack([each(v[b], singles[b]) for b in range(b_count)]), x, repeat, sync)
    return t_b, t_l, float((out - outs).abs().max())


def run_batched(args, device, sync) -> None:
    """Print one call on (B, n, d) vs B calls on (n, d) for every rule."""
    print("| rule | B | n | d | batched s | B calls s | ratio | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.n:
        for d in (int(v) for v in args.d):
            for b_count in args.replicas:
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(b_count, n, d, generator=gen).to(device) * 1e-2
                g0 = torch.randn(b_count, d, generator=gen).to(device) * 1e-2
                for label, name, params in batched_cases(n):
                    if args.rules and not any(label.startswith(r) for r in args.rules):
                        continue
                    t_b, t_l, diff = time_batched(name, params, x, g0, args.repeat, sync)
                    print(f"| {label} | {b_count} | {n} | {d} | {t_b:.4f} | {t_l:.4f} | "
                          f"{t_l / t_b:.1f} | {diff:.1e} |", flush=True)


def best_times_interleaved(fns, arg, repeat, sync, warm_up_s=1.0):
    """[(best wall time, best process CPU time, output)] of each of ``fns`` over ``repeat``
    rounds that call every fn once in turn, so that load from other processes hits all
    alike, after ``warm_up_s`` seconds of untimed rounds."""
    start = time.perf_counter()
    while True:
        outs = [fn(arg) for fn in fns]
        sync()
        if time.perf_counter() - start >= warm_up_s:
            break
    best = [float("inf")] * len(fns)
    best_cpu = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            start, start_cpu = time.perf_counter(), time.process_time()
            outs[k] = fn(arg)
            sync()
            best[k] = min(best[k], time.perf_counter() - start)
            best_cpu[k] = min(best_cpu[k], time.process_time() - start_cpu)
    return list(zip(best, best_cpu, outs))


def best_time(fn, arg, repeat, sync):
    """Best wall and process-CPU time of ``repeat`` calls after a warm-up call, and the output."""
    out = fn(arg)
    sync()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn(arg)
        sync()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[10, 100])
    p.add_argument("--d", type=float, nargs="+", default=[1e5, 1e6])
    p.add_argument("--quick", action="store_true", help="n ∈ {10, 20}, d ∈ {1e3, 1e4}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--reference-repeat", type=int, default=1)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--rules", nargs="*", help="only rules whose label starts with one of these")
    p.add_argument("--batched", action="store_true",
                   help="time replica batches (B, n, d) against B separate calls")
    p.add_argument("--replicas", type=int, nargs="+", default=[16, 256])
    p.add_argument("--versus-torch", action="store_true",
                   help="Krum, multi-Krum, geometric median vs plain vectorised PyTorch")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own); "
                   "on a busy machine 1 avoids OpenMP oversubscription stalls")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.d = [10, 20], [1e3, 1e4]
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    print(f"# fedlib.aggregators benchmark — torch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, float32, best of {args.repeat}\n")
    if args.batched:
        run_batched(args, device, sync)
        return
    if args.versus_torch:
        run_versus_torch(args, device, sync)
        return
    print("| rule | n | d | torch s | torch cpu s | numpy s | numpy/torch | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.n:
        for d in (int(v) for v in args.d):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(n, d, generator=gen)
            xd, xa = x.to(device), x.numpy()
            for label, fn, ref in cases(n, d, gen):
                if args.rules and not any(label.startswith(r) for r in args.rules):
                    continue
                t_torch, cpu_torch, out = best_time(fn, xd, args.repeat, sync)
                row = f"| {label} | {n} | {d:.0e} | {t_torch:.4f} | {cpu_torch:.4f} |"
                if args.no_reference:
                    print(row + " – | – | – |", flush=True)
                    continue
                t_ref, _, out_ref = best_time(ref, xa, args.reference_repeat, lambda: None)
                diff = float(np.abs(out.cpu().numpy() - out_ref).max())
                print(row + f" {t_ref:.4f} | {t_ref / t_torch:.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
