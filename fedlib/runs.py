"""Experiment runs: a plain config dict in, a cached :class:`Result` out.

``run(config)`` builds the task, the aggregator and the attack named in the config, runs
the protocol, and stores the result on disk under a hash of the canonical config, the
fedlib version, the device type and the CPU thread count (``$FEDLIB_CACHE`` or
``.cache/runs`` at the repository root). Writes are atomic (a temporary directory renamed into place), so a killed run leaves
no corrupt entry; an unreadable entry is recomputed. The same config and seed reproduce a
bit-identical history on CPU with the same number of torch threads (a different thread count
changes float summation order, and long runs amplify it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from . import __version__, data, engine, models, protocols
from .context import RoundEvent
from .flat import ParamSpec, flatten_module


@dataclass
class RunConfig:
    """One experiment. Every field is plain data, so the dict form is the cache key."""

    dataset: str = "mnist"
    """A name accepted by ``fedlib.data.load``."""
    model: str = "l2a-mnist"
    """A name accepted by ``fedlib.models.build``."""
    width: float = 1.0
    """Model width multiplier (1 = the paper's model; smaller for CPU smoke runs)."""
    protocol: str = "sync"
    """"sync" (L2A Algorithm 1) or "romoa" (Romoa Algorithms 1–2, lookahead uploads)."""
    num_clients: int = 10
    """K (sync) or n (romoa): the number of participants."""
    clients_per_round: Optional[int] = None
    """w: clients sampled per round (sync only); None = all."""
    rounds: int = 100
    """Rounds (sync) or iterations T (romoa)."""
    local_steps: int = 1
    """E: local SGD steps per round (sync); Romoa's protocol takes one step per iteration."""
    lr: float = 0.01
    """η, the clients' SGD learning rate."""
    batch_size: int = 128
    """B, the local minibatch size."""
    tau: int = 4
    """τ, Romoa's syncing period in iterations."""
    moving_rate: float = 1.0
    """γ of Algorithms 1–2: how far participants move toward θ̄ at a sync (1 = adopt it)."""
    partition: str = "iid"
    """"iid", "q-noniid", "one-class" or "dirichlet" (``fedlib.data.partition``)."""
    q: Optional[float] = None
    """Fang et al.'s non-iid degree for "q-noniid"."""
    alpha: Optional[float] = None
    """Dirichlet concentration for "dirichlet"."""
    train_size: Optional[int] = None
    """Use a seeded random subset of the training set of this size (None = all)."""
    aggregator: str = "mean"
    """A name accepted by ``fedlib.aggregators.get``."""
    aggregator_params: dict = field(default_factory=dict)
    """Keyword arguments of the aggregator (e.g. ``{"f": 1}`` for Krum)."""
    attack: str = "none"
    """A name accepted by ``fedlib.attacks.get``, or "none"."""
    attack_params: dict = field(default_factory=dict)
    """Keyword arguments of the attack."""
    num_attackers: int = 0
    """M: clients 0..M−1 are malicious."""
    attack_start: int = 0
    """First round (0-based) in which the attack replaces the malicious uploads."""
    root_size: int = 100
    """|D₀|, FLTrust's root set size."""
    root_q0: Optional[float] = None
    """FLTrust root-set bias q₀ (None = 1/C, unbiased)."""
    shared_noise: float = 0.0
    """Scale of Laplace noise added to the model shared with clients (L2A appendix E.2)."""
    eval_every: int = 10
    """Evaluate every this many rounds (and after the last)."""
    eval_size: Optional[int] = None
    """Evaluate on a fixed random subset of the test set of this size (None = all)."""
    train_eval_size: int = 0
    """Also report accuracy on a fixed subset of the training set of this size (0 = off)."""
    record_weights: bool = True
    """Record the aggregator's per-client weights every aggregation."""
    strategy: str = "auto"
    """Local training: "auto", "sequential" or "vmap" (``fedlib.engine.local_sgd``)."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    seed: int = 0
    """Seeds the initial model, the partition, the batches, subsampling and the attack."""

    @classmethod
    def from_dict(cls, config: dict | "RunConfig") -> "RunConfig":
        """Validate a plain dict (unknown keys are errors) into a config."""
        if isinstance(config, RunConfig):
            return config
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        cfg = cls(**config)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError for impossible settings."""
        if self.protocol not in ("sync", "romoa"):
            raise ValueError(f"protocol must be 'sync' or 'romoa', got {self.protocol!r}")
        for name in ("num_clients", "rounds", "local_steps", "batch_size", "tau", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.num_attackers < self.num_clients:
            raise ValueError(f"num_attackers must be in [0, num_clients), got {self.num_attackers}")
        w = self.clients_per_round
        if w is not None and not 1 <= w <= self.num_clients:
            raise ValueError(f"clients_per_round must be in [1, {self.num_clients}], got {w}")
        if not 0 <= self.moving_rate <= 1:
            raise ValueError(f"moving_rate must be in [0, 1], got {self.moving_rate}")
        if self.attack != "none" and self.num_attackers == 0:
            raise ValueError(f"attack {self.attack!r} needs num_attackers ≥ 1")

    def to_dict(self) -> dict:
        """The plain dict form (the cache key's content)."""
        return dataclasses.asdict(self)


@dataclass
class Result:
    """A finished run: its config, per-evaluation history and final global model."""

    config: dict
    history: dict
    theta: Tensor
    meta: dict

    def last(self, key: str) -> Any:
        """The last recorded value of a history entry."""
        return self.history[key][-1]

    def frame(self):
        """The scalar history entries as a pandas DataFrame indexed by round."""
        import pandas as pd
        n = len(self.history["round"])
        cols = {k: v for k, v in self.history.items()
                if len(v) == n and all(isinstance(x, (int, float)) for x in v)}
        return pd.DataFrame(cols).set_index("round")


def device_of(name: str) -> torch.device:
    """Resolve "auto" to CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cache_dir() -> Path:
    """``$FEDLIB_CACHE`` or ``.cache/runs`` at the repository root (else the working dir)."""
    env = os.environ.get("FEDLIB_CACHE")
    if env:
        return Path(env)
    from .data import repo_root
    return (repo_root() or Path.cwd()) / ".cache" / "runs"


def config_key(cfg: RunConfig, threads: Optional[int] = None) -> str:
    """sha256 of the canonical config, the fedlib version, the device type and, on CPU, the
    number of torch threads (float reductions, hence results, depend on it; default: the
    current ``torch.get_num_threads()``)."""
    dev = device_of(cfg.device).type
    threads = threads if threads is not None else torch.get_num_threads()
    blob = json.dumps({"config": cfg.to_dict(), "version": __version__, "device": dev,
                       "threads": threads if dev == "cpu" else None},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _seeded_subset(n: int, size: Optional[int], *keys) -> Tensor:
    if size is None or size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(engine.seed_for(*keys))
    return torch.randperm(n, generator=g)[:size].sort().values


def build_task(cfg: RunConfig) -> engine.Task:
    """Load the data, partition it and build the model template for ``cfg``."""
    dev = device_of(cfg.device)
    train, test = data.load(cfg.dataset)
    keep = _seeded_subset(len(train), cfg.train_size, "train", cfg.dataset, cfg.seed)
    x_train, y_train = train.x[keep], train.y[keep]
    parts = data.partition(y_train.numpy(), cfg.num_clients, cfg.partition, seed=cfg.seed,
                           q=cfg.q, alpha=cfg.alpha)
    torch.manual_seed(engine.seed_for(cfg.seed, "init"))
    model = models.build(cfg.model, num_classes=train.num_classes, width=cfg.width).to(dev)
    return engine.Task(model=model, spec=ParamSpec.of(model), x_train=x_train.to(dev),
                       y_train=y_train.to(dev), x_test=test.x.to(dev), y_test=test.y.to(dev),
                       clients=[torch.as_tensor(p, dtype=torch.long, device=dev) for p in parts],
                       num_classes=train.num_classes, device=dev)


def _build_attack(cfg: RunConfig, task: engine.Task):
    if cfg.attack in (None, "none"):
        return None
    from . import attacks
    attack = attacks.get(cfg.attack, **cfg.attack_params)
    if callable(getattr(attack, "prepare", None)):
        attack.prepare(task)
    return attack


def _server_update_fn(cfg: RunConfig, task: engine.Task) -> Callable[[Tensor], Tensor]:
    q0 = cfg.root_q0 if cfg.root_q0 is not None else 1.0 / task.num_classes
    idx = data.root_set(task.y_train.cpu().numpy(), cfg.root_size, q0, seed=cfg.seed)
    idx = torch.as_tensor(idx, dtype=torch.long, device=task.device)
    x0, y0 = task.x_train[idx], task.y_train[idx]
    return lambda theta: cfg.lr * engine.gradient(task, theta, x0, y0)


def execute(cfg: RunConfig, callbacks: Sequence[Callable[[RoundEvent], None]] = (),
            progress: bool = True) -> Result:
    """Run ``cfg`` now, without the cache."""
    from . import aggregators
    start = time.perf_counter()
    task = build_task(cfg)
    theta = flatten_module(task.model)
    aggregator = aggregators.get(cfg.aggregator, **cfg.aggregator_params)
    attack = _build_attack(cfg, task)
    malicious = torch.zeros(cfg.num_clients, dtype=torch.bool)
    malicious[: cfg.num_attackers] = True
    mal_idx = torch.cat([task.clients[i] for i in range(cfg.num_attackers)]) if cfg.num_attackers \
        else torch.zeros(0, dtype=torch.long, device=task.device)
    attacker_data = (task.x_train[mal_idx], task.y_train[mal_idx])
    ev = _seeded_subset(len(task.y_test), cfg.eval_size, "eval", cfg.dataset)
    tr = _seeded_subset(len(task.y_train), cfg.train_eval_size, "train-eval", cfg.dataset) \
        if cfg.train_eval_size else None
    targets = getattr(attack, "targets", None)
    recorder = protocols.Recorder(
        task, task.x_test[ev.to(task.device)], task.y_test[ev.to(task.device)],
        None if tr is None else task.x_train[tr.to(task.device)],
        None if tr is None else task.y_train[tr.to(task.device)],
        targets, cfg.num_clients, cfg.record_weights)
    gated = _Gated(attack, cfg.attack_start) if attack is not None else None
    common = dict(lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, aggregator=aggregator,
                  attack=gated, malicious=malicious, attacker_data=attacker_data,
                  recorder=recorder, eval_every=cfg.eval_every, strategy=cfg.strategy,
                  callbacks=callbacks, progress=progress)
    if cfg.protocol == "sync":
        needs = getattr(aggregator, "needs_server_update", False)
        theta = protocols.run_sync(
            task, theta, rounds=cfg.rounds, clients_per_round=cfg.clients_per_round or cfg.num_clients,
            local_steps=cfg.local_steps, server_update=_server_update_fn(cfg, task) if needs else None,
            shared_noise=cfg.shared_noise, **common)
    else:
        theta = protocols.run_romoa(task, theta, rounds=cfg.rounds, tau=cfg.tau,
                                    moving_rate=cfg.moving_rate, **common)
    meta = {"fedlib_version": __version__, "device": str(task.device),
            "seconds": round(time.perf_counter() - start, 3), "dim": task.spec.dim,
            "key": config_key(cfg), "cached": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return Result(cfg.to_dict(), recorder.history, theta.detach().cpu(), meta)


class _Gated:
    """Wraps an attack so that rounds before ``start`` are left honest."""

    def __init__(self, attack: Any, start: int):
        self.attack, self.start = attack, start
        self.name = getattr(attack, "name", type(attack).__name__)

    def __call__(self, ctx):
        return self.attack(ctx) if ctx.round >= self.start else ctx.honest_updates

    def __getattr__(self, item):
        return getattr(self.attack, item)


def _write(entry: Path, result: Result) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        with open(tmp / "result.json", "w") as fh:
            json.dump({"config": result.config, "history": result.history, "meta": result.meta}, fh)
        torch.save(result.theta, tmp / "theta.pt")
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same run first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read(entry: Path) -> Optional[Result]:
    try:
        with open(entry / "result.json") as fh:
            blob = json.load(fh)
        theta = torch.load(entry / "theta.pt", weights_only=True, map_location="cpu")
    except FileNotFoundError:
        return None
    except Exception as err:  # corrupt entry: recompute rather than trust it
        warnings.warn(f"ignoring unreadable cache entry {entry}: {err}", RuntimeWarning)
        return None
    meta = dict(blob["meta"], cached=True)
    return Result(blob["config"], blob["history"], theta, meta)


def run(config: dict | RunConfig, *, cache: bool = True,
        callbacks: Sequence[Callable[[RoundEvent], None]] = (), progress: bool = True) -> Result:
    """Run an experiment, or load it from the on-disk cache.

    With ``callbacks`` the run always executes (so that they see every round) and its
    result is then cached; ``cache=False`` neither reads nor writes the cache.
    """
    cfg = RunConfig.from_dict(config)
    entry = cache_dir() / config_key(cfg)
    if cache and not callbacks:
        hit = _read(entry)
        if hit is not None:
            return hit
    result = execute(cfg, callbacks=callbacks, progress=progress)
    if cache:
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        _write(entry, result)
    return result


def _worker(configs: list[dict]) -> None:
    """A :func:`run_many` worker process: its share of the runs, one torch thread, into the cache."""
    torch.set_num_threads(1)
    for config in configs:
        run(config, progress=False)


def run_many(configs: Sequence[dict | RunConfig], *, workers: int = 1,
             progress: bool = True) -> list[Result]:
    """:func:`run` for several configs; with ``workers`` > 1, in that many processes.

    Small models do not use two CPU cores well within one run, so on a CPU several runs side
    by side, one torch thread each, finish sooner (about 1.3× with 2 workers on 2 cores for
    the Romoa smoke grid). Results then depend on — and are cached under — one thread per run
    (see :func:`config_key`): ``run_many(cs, workers=2)`` reproduces itself bit for bit, but
    not ``run(c)`` with two threads. ``workers=1`` is exactly ``[run(c) for c in configs]``.
    Runs on other devices ignore ``workers``. Cache hits are read without starting a process;
    the workers are plain ``python -c`` subprocesses (no multiprocessing: safe to call from a
    script without a ``__main__`` guard, or from a notebook).
    """
    cfgs = [RunConfig.from_dict(c) for c in configs]
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    parallel = workers > 1 and all(device_of(c.device).type == "cpu" for c in cfgs)
    if not parallel:
        return [run(c, progress=progress and len(cfgs) == 1) for c in cfgs]
    entries = [cache_dir() / config_key(c, threads=1) for c in cfgs]
    unique = {}                                                 # identical configs run once
    for c, e in zip(cfgs, entries):
        if e.name not in unique and _read(e) is None:
            unique[e.name] = c.to_dict()
    if unique:
        _spawn_workers(list(unique.values()), [cache_dir() / k for k in unique],
                       min(workers, len(unique)), progress)
    out = []
    for e in entries:
        hit = _read(e)
        if hit is None:
            raise RuntimeError(f"run_many: no result in {e} after its run")
        hit.meta["cached"] = e.name not in unique
        out.append(hit)
    return out


def _spawn_workers(configs: list[dict], entries: list[Path], workers: int,
                   progress: bool) -> None:
    """Run ``configs`` round-robin in ``workers`` subprocesses; wait, showing progress."""
    import subprocess
    import sys
    from tqdm import tqdm
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               FEDLIB_CACHE=str(cache_dir()))
    code = "import json, sys; from fedlib import runs; runs._worker(json.load(sys.stdin))"
    procs, logs = [], []
    for w in range(workers):
        logs.append(tempfile.TemporaryFile(mode="w+"))          # a pipe could fill and block
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=logs[-1], env=env, text=True)
        p.stdin.write(json.dumps(configs[w::workers], default=str))
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
    failed = [log for p, log in zip(procs, logs) if p.returncode != 0]
    tail = ""
    if failed:
        failed[0].seek(0)
        tail = failed[0].read()[-2000:]
    for log in logs:
        log.close()
    if failed:
        raise RuntimeError(f"run_many: a worker process failed:\n{tail}")
