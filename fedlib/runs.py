"""Experiment runs: a plain config dict in, a cached :class:`Result` out.

``run(config)`` builds a :class:`fedlib.federation.Federation` from the config (data, partition,
model, aggregator, attack), runs it with a :class:`fedlib.recording.Recorder` observing, and
stores the result in the run cache (:mod:`fedlib.cache`) under a hash of the canonical config,
the fedlib version, the device type and the CPU thread count. The same config and seed reproduce
a bit-identical history on CPU with the same number of torch threads (a different thread count
changes float summation order, and long runs amplify it). A cached run checkpoints its full
state every ``checkpoint_every`` rounds and a killed run resumes from there
(:mod:`fedlib.checkpoint`); so does a cached replica batch of ``run_many``.
``run_many`` runs several configs: in worker processes or as Ray tasks (:mod:`fedlib.parallel`),
or — for configs that differ only in their seed — as the replicas of one batched federation.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import __version__, parallel
from .cache import Result, cache_dir, config_key, read_entry, write_entry
from .checkpoint import load_checkpoint, load_federation_state, save_checkpoint
from .config import RunConfig, device_of
from .context import RoundEvent
from .federation import Federation
from .recording import Recorder
from .tasks import build_attack, build_task, load_data, seeded_subset, server_update_fn

__all__ = ["RunConfig", "Result", "run", "run_many", "execute", "execute_replicas", "build_task",
           "build_attack", "load_data", "server_update_fn", "recorders", "cache_dir",
           "config_key", "device_of", "partial_path", "CHECKPOINT_EVERY"]


def recorders(cfg: RunConfig, fed: Any) -> list[Recorder]:
    """One :class:`Recorder` per replica of ``fed``, with the evaluation subsets of ``cfg``."""
    out = []
    for b, (task, attack) in enumerate(zip(fed.tasks, fed.attacks)):
        ev = seeded_subset(len(task.y_test), cfg.eval_size, "eval", cfg.dataset).to(task.device)
        tr = seeded_subset(len(task.y_train), cfg.train_eval_size, "train-eval", cfg.dataset) \
            .to(task.device) if cfg.train_eval_size else None
        out.append(Recorder(
            task, task.x_test[ev], task.y_test[ev],
            None if tr is None else task.x_train[tr], None if tr is None else task.y_train[tr],
            getattr(attack, "targets", None), cfg.num_clients, cfg.record_weights,
            rounds=cfg.rounds, eval_every=cfg.eval_every, replica=b))
    return out


def execute_replicas(cfgs: Sequence[RunConfig],
                     callbacks: Sequence[Callable[[RoundEvent], None]] = (),
                     progress: bool = True,
                     checkpoint: Optional[tuple[Path, str, int]] = None) -> list[Result]:
    """Run configs that differ only in ``seed`` as the replicas of one federation, uncached.

    ``checkpoint=(path, key, every)``: resume from the checkpoint at ``path`` if it holds run
    ``key``, and write one every ``every`` rounds (:mod:`fedlib.checkpoint`).
    """
    cfgs = [RunConfig.from_dict(c) for c in cfgs]
    base = cfgs[0]
    if any(_without_seed(c) != _without_seed(base) for c in cfgs):
        raise ValueError("execute_replicas: the configs must differ only in 'seed'")
    if callbacks and len(cfgs) > 1:
        raise ValueError("callbacks see one federation's rounds: run a single config")
    start = time.perf_counter()
    seeds = [c.seed for c in cfgs]
    fed = Federation.from_config(base, seeds=seeds)
    recs = recorders(base, fed)
    blob = checkpoint and load_checkpoint(checkpoint[0], checkpoint[1])
    if blob:
        try:
            load_federation_state(fed, blob["federation"])
            if len(blob["histories"]) != len(recs):
                raise ValueError("it holds another number of histories")
        except Exception as err:                         # start over on fresh objects
            warnings.warn(f"ignoring checkpoint {checkpoint[0]} that does not fit this run "
                          f"({err}); the run restarts from round 0", RuntimeWarning, stacklevel=2)
            blob = None
            fed = Federation.from_config(base, seeds=seeds)
            recs = recorders(base, fed)
    if blob:
        for r, h in zip(recs, blob["histories"]):
            r.history = h
    else:
        for r in recs:
            r.start(fed)
    resumed = fed.round

    def call_back(f: Federation, result: Any) -> None:
        for cb in callbacks:
            cb(result.event(0, base.lr, f.aggregators[0]))

    from tqdm import tqdm
    bar = tqdm(total=base.rounds, initial=resumed, disable=not progress, mininterval=2.0,
               desc="rounds" if base.protocol == "sync" else "iterations")
    saving = [checkpoint is not None]

    def tick(f: Federation, result: Any) -> None:
        bar.update(1)
        if saving[0] and f.round % checkpoint[2] == 0 and f.round < base.rounds:
            try:
                save_checkpoint(checkpoint[0], checkpoint[1], f, [r.history for r in recs])
            except TypeError as err:                     # state that is not plain data
                saving[0] = False
                warnings.warn(f"this run cannot be checkpointed ({err}); it runs on without",
                              RuntimeWarning, stacklevel=2)

    observers = [*recs, call_back, tick] if callbacks else [*recs, tick]
    try:
        fed.run(base.rounds - fed.round, observers=observers, progress=False)
    finally:
        bar.close()
    seconds = round(time.perf_counter() - start, 3)
    out = []
    for b, (c, rec) in enumerate(zip(cfgs, recs)):
        meta = {"fedlib_version": __version__, "device": str(fed.device), "seconds": seconds,
                "dim": fed.task.spec.dim, "cached": False,
                "key": config_key(c, replica_seeds=seeds if len(seeds) > 1 else None),
                "replica_seeds": seeds if len(seeds) > 1 else None, "resumed_from": resumed,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        out.append(Result(c.to_dict(), rec.history, fed.theta[b].detach().cpu(), meta))
    return out


def execute(cfg: RunConfig, callbacks: Sequence[Callable[[RoundEvent], None]] = (),
            progress: bool = True,
            checkpoint: Optional[tuple[Path, str, int]] = None) -> Result:
    """Run ``cfg`` now, without the cache: build a :class:`Federation`, run it, record it."""
    return execute_replicas([cfg], callbacks=callbacks, progress=progress,
                            checkpoint=checkpoint)[0]


def _without_seed(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    d.pop("seed")
    return json.dumps(d, sort_keys=True, default=str)


CHECKPOINT_EVERY = 100
"""Default rounds between two checkpoints of a cached run (smoke runs are shorter: no cost)."""


def partial_path(entry: Path) -> Path:
    """Where the checkpoint of the run cached at ``entry`` lives while it runs."""
    return entry.parent / f"{entry.name}.partial" / "state.pt"


def _check_every(checkpoint_every: Optional[int]) -> None:
    """``checkpoint_every`` is an integer ≥ 1 or None (a ValueError before any work)."""
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or
                                         not isinstance(checkpoint_every, int) or
                                         checkpoint_every < 1):
        raise ValueError("checkpoint_every must be an integer ≥ 1 or None, got "
                         f"{checkpoint_every!r}")


def run(config: dict | RunConfig, *, cache: bool = True,
        callbacks: Sequence[Callable[[RoundEvent], None]] = (), progress: bool = True,
        checkpoint_every: Optional[int] = CHECKPOINT_EVERY) -> Result:
    """Run an experiment, or load it from the on-disk cache.

    A cached run writes its full state (:mod:`fedlib.checkpoint`) every ``checkpoint_every``
    rounds to ``<key>.partial/`` beside its cache entry; rerunning a killed run resumes from
    the last checkpoint and finishes bit-identical to an uninterrupted run on CPU (same torch
    thread count). The checkpoint is deleted when the run completes; an unreadable one is
    ignored with a warning. ``checkpoint_every=None`` turns checkpoints off. With ``callbacks``
    the run always executes from round 0 (so that they see every round), without checkpoints,
    and its result is then cached; ``cache=False`` neither reads nor writes the cache.
    """
    cfg = RunConfig.from_dict(config)
    _check_every(checkpoint_every)
    entry = cache_dir() / config_key(cfg)
    if cache and not callbacks:
        hit = read_entry(entry)
        if hit is not None:
            return hit
    resumable = cache and not callbacks and checkpoint_every is not None
    partial = partial_path(entry)
    result = execute(cfg, callbacks=callbacks, progress=progress,
                     checkpoint=(partial, entry.name, checkpoint_every) if resumable else None)
    if cache:
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        write_entry(entry, result)
        shutil.rmtree(partial.parent, ignore_errors=True)
    return result


def run_many(configs: Sequence[dict | RunConfig], *, workers: int = 1, replicas: bool = False,
             progress: bool = True, backend: Optional[str] = None, address: Optional[str] = None,
             num_cpus: Optional[float] = None, num_gpus: Optional[float] = None,
             checkpoint_every: Optional[int] = CHECKPOINT_EVERY) -> list[Result]:
    """:func:`run` for several configs, in input order; identical configs run once.

    * ``backend``: "local" (this machine) or "ray" (one Ray task per run); None picks "ray" when
      ``$FEDLIB_BACKEND`` is "ray" or ``$RAY_ADDRESS`` is set, else "local".
    * ``workers`` > 1 (local): in that many processes with one torch thread each (small models do
      not use two CPU cores well within one run; ``benchmarks/RESULTS.md``). Results
      depend on — and are cached under — one thread per run (see
      :func:`config_key`): they reproduce themselves bit for bit, but not ``run(c)`` with two
      threads. The workers are plain ``python -c`` subprocesses (no multiprocessing: safe from a
      script without a ``__main__`` guard, or from a notebook). Other devices ignore ``workers``.
    * ``backend="ray"``: each run is a Ray task with ``num_cpus`` CPUs (and ``int(num_cpus)``
      torch threads, at least 1: ``num_cpus=1`` gives the results of ``workers`` > 1) and
      ``num_gpus`` GPUs (fractions allowed; defaults ``$FEDLIB_RAY_NUM_CPUS`` or 1,
      ``$FEDLIB_RAY_NUM_GPUS`` or 0), on a running Ray, the cluster at ``address``
      (``"auto"``, ``"ray://host:10001"``; default ``$RAY_ADDRESS``) or a new local instance.
      Results land in the same cache, which **must be on storage every node sees**
      (``$FEDLIB_CACHE``); ``workers`` is ignored (the cluster's resources decide). A failing
      run does not stop the others: one error at the end lists each failed config and its
      traceback. Needs the optional extra: ``pip install "fedlib-poisoning[ray]"``.
    * ``replicas=True``: configs that differ only in ``seed`` run as the replicas of one batched
      :class:`~fedlib.federation.Federation` (one vmapped computation), here, whatever the
      backend. Each replica equals its separate run up to float32 round-off (tested at rtol
      1e-4, atol 1e-5 over a few rounds; long runs can amplify it), so these results are cached
      under a key that also names the seeds of the batch. A batch checkpoints its federation
      and every replica's history every ``checkpoint_every`` rounds to
      ``<key>.partial/state.pt`` beside its first replica's (lowest seed's) cache entry; a
      killed batch resumes from there bit-identically (CPU, same thread count) and the
      checkpoint is deleted once every replica's result is cached.
    * ``checkpoint_every``: as in :func:`run`, for the runs made in this process (one at a time,
      or replica batches); worker processes and Ray tasks checkpoint every
      :data:`CHECKPOINT_EVERY` rounds.
    ``workers=1, replicas=False`` with the local backend is exactly ``[run(c) for c in configs]``.
    """
    cfgs = [RunConfig.from_dict(c) for c in configs]
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    _check_every(checkpoint_every)
    chosen = parallel.resolve_backend(backend)
    if replicas:
        return _run_replica_groups(cfgs, progress, checkpoint_every)
    if chosen == "ray":
        return _run_on_ray(cfgs, address, num_cpus, num_gpus, progress)
    parallel_ = workers > 1 and all(device_of(c.device).type == "cpu" for c in cfgs)
    if not parallel_:
        return [run(c, progress=progress and len(cfgs) == 1, checkpoint_every=checkpoint_every)
                for c in cfgs]
    entries = [cache_dir() / config_key(c, threads=1) for c in cfgs]
    unique = {}                                                 # identical configs run once
    for c, e in zip(cfgs, entries):
        if e.name not in unique and read_entry(e) is None:
            unique[e.name] = c.to_dict()
    if unique:
        parallel.spawn_workers("fedlib.runs:run", list(unique.values()),
                               [cache_dir() / k for k in unique], min(workers, len(unique)),
                               cache_dir(), progress)
    out = []
    for e in entries:
        hit = read_entry(e)
        if hit is None:
            raise RuntimeError(f"run_many: no result in {e} after its run")
        hit.meta["cached"] = e.name not in unique
        out.append(hit)
    return out


def _run_on_ray(cfgs: list[RunConfig], address: Optional[str], num_cpus: Optional[float],
                num_gpus: Optional[float], progress: bool) -> list[Result]:
    """:func:`run_many` with ``backend="ray"``: unique, uncached configs as Ray tasks."""
    num_cpus, num_gpus = parallel.ray_resources(num_cpus, num_gpus)
    threads = max(1, int(num_cpus))
    canon = [json.dumps(c.to_dict(), sort_keys=True, default=str) for c in cfgs]
    found: dict[str, Result] = {}
    todo: dict[str, dict] = {}                                  # identical configs run once
    for c, k in zip(cfgs, canon):
        if k in found or k in todo:
            continue
        hit = read_entry(cache_dir() / config_key(c, threads=threads))
        if hit is not None:
            found[k] = hit
        else:
            todo[k] = c.to_dict()
    failures = []
    if todo:
        outs = parallel.ray_map(run, list(todo.values()), cache=cache_dir(), address=address,
                                num_cpus=num_cpus, num_gpus=num_gpus, threads=threads,
                                progress=progress)
        for (k, config), o in zip(todo.items(), outs):
            if not o["ok"]:
                failures.append((config, o["traceback"]))
                continue
            result = Result(o["config"], o["history"], o["theta"], dict(o["meta"], cached=False))
            entry = cache_dir() / result.meta["key"]
            if read_entry(entry) is None:                       # a cache this node does not share
                write_entry(entry, result)
            found[k] = result
    if failures:
        raise parallel.RunFailure(failures, len(todo))
    return [found[k] for k in canon]


def _run_replica_groups(cfgs: list[RunConfig], progress: bool,
                        checkpoint_every: Optional[int]) -> list[Result]:
    """Group configs by everything but the seed; run each group as one replica batch, cached
    and checkpointed beside the cache entry of its lowest seed (:func:`partial_path`)."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(_without_seed(c), []).append(i)
    out: list[Optional[Result]] = [None] * len(cfgs)
    for members in groups.values():
        seeds = sorted({cfgs[i].seed for i in members})
        if len(seeds) == 1:
            for i in members:
                out[i] = run(cfgs[i], progress=progress, checkpoint_every=checkpoint_every)
            continue
        by_seed = {cfgs[i].seed: cfgs[i] for i in members}
        entries = {s: cache_dir() / config_key(by_seed[s], replica_seeds=seeds) for s in seeds}
        hits = {s: read_entry(e) for s, e in entries.items()}
        if any(h is None for h in hits.values()):
            first = entries[seeds[0]]
            partial = partial_path(first)
            fresh = execute_replicas(
                [by_seed[s] for s in seeds], progress=progress,
                checkpoint=None if checkpoint_every is None else
                (partial, first.name, checkpoint_every))
            for s, result in zip(seeds, fresh):
                if entries[s].exists():
                    shutil.rmtree(entries[s], ignore_errors=True)
                write_entry(entries[s], result)
                hits[s] = result
            shutil.rmtree(partial.parent, ignore_errors=True)
        for i in members:
            out[i] = hits[cfgs[i].seed]
    return out  # type: ignore[return-value]
