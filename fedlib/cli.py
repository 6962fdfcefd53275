"""Experiments from the command line: ``python -m fedlib run CONFIG.yaml`` and ``sweep GRID.yaml``.

* ``run CONFIG.yaml`` — one run: CONFIG is a flat mapping of :class:`fedlib.config.RunConfig`
  fields; prints the final metrics and writes the history as CSV (``CONFIG.csv`` next to it, or
  ``--out``).
* ``sweep GRID.yaml`` — ``base:`` (a run config) plus ``grid:`` (field → list of values), expanded
  as a Cartesian grid, e.g. ``grid: {aggregator: [krum, median], seed: [0, 1, 2]}``; a dict
  field's entry is addressed with a dot (``aggregator_params.f: [1, 2]``). Runs them with
  :func:`fedlib.runs.run_many` (``--backend local|ray``, ``--workers N``), prints a summary table
  and writes one CSV with one row per run (``GRID.csv``, or ``--out``).

Every config is validated before anything runs — unknown keys, unknown names (dataset, model,
partition, aggregator, attack and their parameters) and impossible settings (e.g. Krum with
n ≤ 2f + 2) — and the error names the field (and, in a sweep, the grid point).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .config import RunConfig

__all__ = ["main", "load_yaml", "expand_grid", "preflight", "final_metrics"]

FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
DICT_FIELDS = {f.name for f in dataclasses.fields(RunConfig)
               if f.default_factory is not dataclasses.MISSING}     # type: ignore[misc]
SWEEP_KEYS = ("base", "grid")


def load_yaml(path: str | Path) -> dict:
    """A YAML file holding one mapping (ValueError otherwise)."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such file: {p}")
    with open(p) as fh:
        blob = yaml.safe_load(fh)
    if not isinstance(blob, dict):
        raise ValueError(f"{p} must hold a mapping of config fields, got {type(blob).__name__}")
    return blob


def _with(config: dict, key: str, value: Any) -> dict:
    """``config`` with field ``key`` (or ``field.entry`` of a dict field) set to ``value``."""
    out = dict(config)
    name, dot, sub = key.partition(".")
    if dot:
        out[name] = dict(out.get(name) or {}, **{sub: value})
    else:
        out[name] = value
    return out


def expand_grid(spec: dict) -> tuple[list[dict], list[dict]]:
    """(configs, grid points) of a sweep spec ``{base: {...}, grid: {field: [values]}}``."""
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"unknown sweep keys {unknown}; a sweep file holds {list(SWEEP_KEYS)}")
    base = spec.get("base") or {}
    grid = spec.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ValueError("'base' and 'grid' must be mappings")
    for key, values in grid.items():
        name, dot, _ = str(key).partition(".")
        if name not in FIELDS:
            raise ValueError(f"grid field {key!r} is not a config field; valid: {sorted(FIELDS)}")
        if dot and name not in DICT_FIELDS:
            raise ValueError(f"grid field {key!r}: {name!r} is not a dict field "
                             f"({sorted(DICT_FIELDS)})")
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid field {key!r} must be a non-empty list, got {values!r}")
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    configs = []
    for point in points:
        config = dict(base)
        for k, v in point.items():
            config = _with(config, k, v)
        configs.append(config)
    return configs, points


def preflight(config: dict) -> RunConfig:
    """Validate a run config fully without running it: fields, names, parameters, settings."""
    from . import aggregators, attacks, data, models
    from .data.paths import canonical_name
    cfg = RunConfig.from_dict(config)
    try:
        canonical_name(cfg.dataset)
    except ValueError as err:
        raise ValueError(f"dataset: {err}") from None
    if cfg.model not in models.available():
        raise ValueError(f"model: unknown model {cfg.model!r}; available: {models.available()}")
    if cfg.partition not in data.SCHEMES:
        raise ValueError(f"partition must be one of {data.SCHEMES}, got {cfg.partition!r}")
    try:
        rule = aggregators.get(cfg.aggregator, **cfg.aggregator_params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"aggregator / aggregator_params: {err}") from None
    if cfg.attack not in (None, "none"):
        try:
            attacks.get(cfg.attack, **cfg.attack_params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"attack / attack_params: {err}") from None
    stateless = not getattr(rule, "needs_server_update", False) and cfg.aggregator != "romoa"
    if stateless:                          # a dry aggregation: counts such as Krum's n > 2f + 2
        n = cfg.clients_per_round or cfg.num_clients
        try:
            rule(torch.zeros(n, 4))
        except ValueError as err:
            raise ValueError(f"aggregator_params with {n} uploads per round: {err}") from None
    return cfg


def final_metrics(result: Any) -> dict:
    """The last value of every scalar history entry (and the run's time and cache key)."""
    h = result.history
    out = {k: v[-1] for k, v in h.items()
           if v and isinstance(v[-1], (int, float)) and not isinstance(v[-1], bool)
           and k not in ("weights_round",)}
    out["seconds"] = result.meta.get("seconds")
    out["key"] = result.meta.get("key")
    return out


def _run(args: argparse.Namespace) -> int:
    from . import runs
    config = load_yaml(args.config)
    preflight(config)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = runs.run(config, cache=not args.no_cache, progress=not args.quiet,
                      checkpoint_every=args.checkpoint_every)
    out = Path(args.out) if args.out else Path(args.config).with_suffix(".csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    result.frame().to_csv(out)
    for k, v in final_metrics(result).items():
        print(f"{k}: {v}")
    print(f"history: {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import runs
    configs, points = expand_grid(load_yaml(args.grid))
    for config, point in zip(configs, points):
        try:
            preflight(config)
        except ValueError as err:
            raise ValueError(f"grid point {point}: {err}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    results = runs.run_many(configs, workers=args.workers, backend=args.backend,
                            address=args.address, num_cpus=args.num_cpus,
                            num_gpus=args.num_gpus, progress=not args.quiet,
                            checkpoint_every=args.checkpoint_every)
    rows = [{**{k: str(v) if isinstance(v, (dict, list)) else v for k, v in p.items()},
             **final_metrics(r)} for p, r in zip(points, results)]
    table = pd.DataFrame(rows)
    out = Path(args.out) if args.out else Path(args.grid).with_suffix(".csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    shown = [c for c in table.columns if c != "key"]
    print(table[shown].to_string(index=False))
    print(f"{len(rows)} runs: {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``python -m fedlib`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m fedlib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one run from a YAML config; history as CSV")
    r.add_argument("config", help="YAML mapping of run config fields")
    r.add_argument("--out", help="CSV of the history (default: CONFIG with .csv)")
    r.add_argument("--no-cache", action="store_true", help="neither read nor write the run cache")
    s = sub.add_parser("sweep", help="a Cartesian grid of runs; one CSV row per run")
    s.add_argument("grid", help="YAML with 'base' (a run config) and 'grid' (field: [values])")
    s.add_argument("--out", help="CSV of the summary (default: GRID with .csv)")
    s.add_argument("--backend", choices=("local", "ray"), default=None,
                   help="where runs execute (default: ray if $RAY_ADDRESS or $FEDLIB_BACKEND=ray)")
    s.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    s.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS)")
    s.add_argument("--num-cpus", type=float, default=None,
                   help="CPUs per Ray task (default $FEDLIB_RAY_NUM_CPUS or 1)")
    s.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per Ray task, fractions allowed (default $FEDLIB_RAY_NUM_GPUS or 0)")
    for q in (r, s):
        q.add_argument("--checkpoint-every", type=int, default=100, metavar="K",
                       help="rounds between checkpoints of a cached run (default 100)")
        q.add_argument("--threads", type=int, default=None, help="torch threads of this process")
        q.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parse ``argv``, run, and turn bad input into one ``error:`` line (exit 2)."""
    args = parser().parse_args(argv)
    try:
        return _run(args) if args.command == "run" else _sweep(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
