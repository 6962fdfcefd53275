"""Where :func:`fedlib.runs.run_many` runs its configs: worker subprocesses, or Ray tasks.

* **local** — plain ``python -c`` subprocesses on this machine (no multiprocessing: safe from a
  script without a ``__main__`` guard, or from a notebook), one torch thread each.
* **ray** — one Ray task per run, on a local Ray instance or an existing cluster
  (``address="auto"`` / ``"ray://host:10001"``); ``num_cpus`` / ``num_gpus`` per task (fractional
  GPUs allowed); each task runs with ``int(num_cpus)`` torch threads (at least 1). Every task
  writes into the driver's run cache directory, which must therefore be on storage every node
  sees (it is also where killed runs' checkpoints are resumed from); the result also travels back
  to the driver, which caches it if its own cache does not hold it yet. Ray is an optional extra:
  ``pip install "fedlib-poisoning[ray]"``.

The backends take the run function as an argument (``fedlib.runs.run``), or as a
``"module:function"`` name for a subprocess, so this module does not depend on :mod:`fedlib.runs`.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

__all__ = ["BACKENDS", "resolve_backend", "ray_resources", "spawn_workers", "ray_map",
           "RunFailure"]

BACKENDS = ("local", "ray")
RAY_EXTRA = 'pip install "fedlib-poisoning[ray]"'


class RunFailure(RuntimeError):
    """One or more runs of a batch failed; ``failures`` lists (config, traceback) pairs."""

    def __init__(self, failures: Sequence[tuple[dict, str]], total: int):
        self.failures = list(failures)
        parts = [f"run_many: {len(self.failures)} of {total} runs failed (the others finished "
                 "and are cached):"]
        for config, tb in self.failures:
            parts.append(f"--- config {json.dumps(config, sort_keys=True, default=str)}\n{tb}")
        super().__init__("\n".join(parts))


def resolve_backend(backend: Optional[str]) -> str:
    """``backend``, or from the environment: "ray" when ``FEDLIB_BACKEND=ray`` or ``RAY_ADDRESS``
    is set, else "local" (``FEDLIB_BACKEND=local`` forces the local backend)."""
    if backend is None:
        env = os.environ.get("FEDLIB_BACKEND", "").strip().lower()
        backend = env or ("ray" if os.environ.get("RAY_ADDRESS") else "local")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def ray_resources(num_cpus: Optional[float], num_gpus: Optional[float]) -> tuple[float, float]:
    """CPUs and GPUs per Ray task: the arguments, else ``$FEDLIB_RAY_NUM_CPUS`` (default 1) and
    ``$FEDLIB_RAY_NUM_GPUS`` (default 0; fractions share a GPU between tasks)."""
    cpus = float(os.environ.get("FEDLIB_RAY_NUM_CPUS", 1)) if num_cpus is None else num_cpus
    gpus = float(os.environ.get("FEDLIB_RAY_NUM_GPUS", 0)) if num_gpus is None else num_gpus
    if not cpus > 0 or not gpus >= 0:
        raise ValueError(f"num_cpus must be > 0 and num_gpus ≥ 0, got {cpus}, {gpus}")
    return cpus, gpus


def _load_target(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def worker_main() -> None:
    """A local worker process: its share of the runs (JSON on stdin), one torch thread, each run
    isolated (a failure is reported on stderr and the next run starts)."""
    torch.set_num_threads(1)
    job = json.load(sys.stdin)
    fn = _load_target(job["target"])
    failed = 0
    for config in job["configs"]:
        try:
            fn(config, progress=False)
        except Exception:
            failed += 1
            print(f"run failed: {json.dumps(config, sort_keys=True, default=str)}\n"
                  f"{traceback.format_exc()}", file=sys.stderr, flush=True)
    sys.exit(1 if failed else 0)


def spawn_workers(target: str, configs: list[dict], entries: list[Path], workers: int,
                  cache: Path, progress: bool) -> None:
    """Run ``target(config)`` for ``configs`` round-robin in ``workers`` subprocesses; wait,
    showing progress (a finished run is an entry in ``entries``); raise listing failures."""
    from tqdm import tqdm
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FEDLIB_CACHE=str(cache))
    code = "from fedlib import parallel; parallel.worker_main()"
    procs, logs = [], []
    for w in range(workers):
        logs.append(tempfile.TemporaryFile(mode="w+"))          # a pipe could fill and block
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=logs[-1], env=env, text=True)
        p.stdin.write(json.dumps({"target": target, "configs": configs[w::workers]}, default=str))
        p.stdin.close()
        procs.append(p)
    bar = tqdm(total=len(configs), desc="runs", disable=not progress, mininterval=2.0)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            bar.update(sum((e / "result.json").exists() for e in entries) - bar.n)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    finally:
        bar.close()
    tails = []
    for p, log in zip(procs, logs):
        if p.returncode != 0:
            log.seek(0)
            tails.append(log.read()[-4000:])
        log.close()
    if tails:
        raise RuntimeError("run_many: a worker process failed (the other runs finished and are "
                           "cached):\n" + "\n".join(tails))


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(f'backend="ray" needs Ray, an optional extra: {RAY_EXTRA}') from None
    return ray


def _ray_run(fn: Callable[..., Any], config: dict, cache: str, threads: Optional[int]) -> dict:
    """One Ray task: ``fn(config)`` into the shared cache; its result or traceback as plain data."""
    os.environ["FEDLIB_CACHE"] = cache
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        r = fn(config, progress=False)
    except Exception:
        return {"ok": False, "traceback": traceback.format_exc()}
    return {"ok": True, "config": r.config, "history": r.history, "theta": r.theta, "meta": r.meta}


def ray_map(fn: Callable[..., Any], configs: list[dict], *, cache: Path,
            address: Optional[str] = None, num_cpus: float = 1, num_gpus: float = 0,
            threads: Optional[int] = None, progress: bool = True) -> list[dict]:
    """``fn(config)`` for every config as a Ray task; the tasks' plain results in input order
    (``{"ok": False, "traceback": …}`` for a failed one). Connects to ``address`` (None: a
    running Ray, ``$RAY_ADDRESS``, else a new local instance)."""
    ray = _ray()
    num_cpus, num_gpus = ray_resources(num_cpus, num_gpus)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    from tqdm import tqdm
    task = ray.remote(_ray_run).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)
    refs = [task.remote(fn, c, str(Path(cache).resolve()), threads) for c in configs]
    pending = list(refs)
    with tqdm(total=len(refs), desc="runs (ray)", disable=not progress, mininterval=2.0) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=None)
            bar.update(len(done))
    out = []
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except Exception:                              # the worker itself died
            out.append({"ok": False, "traceback": traceback.format_exc()})
    return out
