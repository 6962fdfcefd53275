"""The defense × attack matrix: every aggregation rule against every attack, one row per run.

Neither paper evaluates the other's idea: L2A (§2, §5) argues that robust rules fall to a learned,
non-myopic attack and never runs Romoa; Romoa (§5) evaluates UPA, TPA and Krum/RFA but no learned
attack. This module builds the grid of run configs for every (dataset, defense, attack, seed),
runs it through :func:`fedlib.runs.run_many` (cached) and summarises the final test accuracies.

**The setting** (L2A App. E.1, :data:`L2A_SETTING`): K = 100 clients, M = 20 of them attackers,
w = 10 sampled per round, L2A Algorithm 1 (``protocol="sync"``). Count-based rules get
f = the expected number of sampled attackers, w·M/K = 2, capped at the largest f the rule accepts
with w uploads (:func:`defense_params`): the server does not know how many attackers it sampled.

**Romoa runs under its own protocol** (Romoa Algorithms 1–2, ``protocol="romoa"``, which
``RunConfig`` requires to have every participant upload every iteration: no client sampling).
Its cells are the nearest lookahead federation to L2A's round: n = w = 10 participants, the
same attacker share (w·M/K = 2 adversaries), τ = 4, moving rate γ = 1/n (``romoa_settings``'s
default) and T = ``iterations_per_round`` × rounds iterations (default 1: as many local SGD steps
per participant as a sync run has rounds; τ gives Romoa as many aggregations as the sync rules).
Both presets run: ``romoa-literal`` (Eqs. 4–11 as printed) and ``romoa-calibrated``.

**A diverged run** (the attack drives the aggregate to NaN/Inf: ``FloatingPointError``, or the
rule finding every upload non-finite) has no final model: its row has ``status="diverged"`` and
no accuracy; :func:`summarise` counts it as ``diverged_accuracy`` (default 0: the attack destroyed
the model, worse than any model). A cell the config validation rejects raises before any run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import pandas as pd

from . import aggregators, attacks, runs
from .diverged_runs import is_divergence
from .romoa_settings import moving_rate as romoa_moving_rate

__all__ = ["L2A_SETTING", "NO_ATTACK", "WORST_CASE", "ROMOA_DEFENSES", "Cell", "defenses",
           "attack_names", "defense_params", "cell_config", "grid", "run_grid", "summarise",
           "worst_case", "matrix"]

L2A_SETTING: dict[str, int] = dict(num_clients=100, clients_per_round=10, num_attackers=20)
"""L2A App. E.1's federation: K clients, w sampled per round, M attackers (clients 0..M−1)."""
NO_ATTACK = "none"
"""The attack name of the runs without attack (the attackers train honestly: M = 0)."""
WORST_CASE = "worst case"
"""The column of :func:`matrix` holding each defense's lowest accuracy over the attacks."""
ROMOA_DEFENSES: dict[str, str] = {"romoa-literal": "literal", "romoa-calibrated": "calibrated"}
"""Romoa's two presets (``fedlib.romoa.Romoa(reading=…)``) as defenses of the matrix."""
_ALIASES = {"rfa": "geometric_median"}
_MAX_F = {"krum": lambda w: (w - 3) // 2, "multi_krum": lambda w: (w - 3) // 2,
          "trimmed_mean": lambda w: (w - 1) // 2, "bulyan": lambda w: (w - 3) // 4}
"""Largest f each count-based rule accepts with w uploads (n > 2f + 2, n > 2f, n ≥ 4f + 3)."""
_SET_BY_GRID = ("dataset", "aggregator", "aggregator_params", "attack", "attack_params",
                "num_attackers", "seed", "protocol")


def defenses() -> list[str]:
    """Every rule of ``fedlib.aggregators`` once (aliases dropped), Romoa as its two presets."""
    names = [n for n in aggregators.available() if n not in _ALIASES and n != "romoa"]
    return names + list(ROMOA_DEFENSES)


def attack_names() -> list[str]:
    """``"none"`` followed by every attack of ``fedlib.attacks`` (the RL attack included)."""
    return [NO_ATTACK] + attacks.available()


def defense_params(defense: str, setting: Mapping[str, int] = L2A_SETTING) -> dict[str, Any]:
    """A defense's aggregator parameters: f = w·M/K capped at the rule's largest valid f."""
    if defense not in defenses():
        raise ValueError(f"unknown defense {defense!r}; choose from {defenses()}")
    k, w, m = _counts(setting)
    if defense in ROMOA_DEFENSES:
        return {"reading": ROMOA_DEFENSES[defense]}
    if defense == "weighted_mean":
        return {"client_weights": [1.0] * k}       # FedAvg's n_k: equal shards of the set
    if defense in _MAX_F:
        return {"f": max(0, min(round(w * m / k), _MAX_F[defense](w)))}
    return {}


def _counts(setting: Mapping[str, int]) -> tuple[int, int, int]:
    k, w, m = (setting.get(key) for key in ("num_clients", "clients_per_round", "num_attackers"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (k, w, m)) \
            or not (1 <= w <= k and 0 < m < k):
        raise ValueError("setting needs integers num_clients K ≥ clients_per_round w ≥ 1 and "
                         f"0 < num_attackers < K, got {dict(setting)}")
    return k, w, m


def cell_config(dataset: str, defense: str, attack: str, seed: int, base: Mapping[str, Any],
                setting: Mapping[str, int] = L2A_SETTING,
                attack_params: Optional[Mapping[str, Any]] = None, *, tau: int = 4,
                moving_rate: Any = "1/n", iterations_per_round: int = 1) -> dict[str, Any]:
    """One validated run config: L2A Algorithm 1, or Romoa Algorithms 1–2 for Romoa's presets."""
    if attack not in attack_names():
        raise ValueError(f"unknown attack {attack!r}; choose from {attack_names()}")
    fixed = sorted(set(base) & (set(_SET_BY_GRID) | set(L2A_SETTING)))
    if fixed:
        raise ValueError(f"base may not set {fixed}: the grid sets them")
    if not isinstance(iterations_per_round, int) or iterations_per_round < 1:
        raise ValueError(f"iterations_per_round must be an integer ≥ 1, got "
                         f"{iterations_per_round!r}")
    k, w, m = _counts(setting)
    params = dict(attack_params or {})
    if attack == "rl":
        params.setdefault("seed", seed)            # the policy's seed follows the run's
    cfg = dict(base, dataset=dataset, seed=seed, aggregator=_rule_name(defense),
               aggregator_params=defense_params(defense, setting), attack=attack,
               attack_params=params if attack != NO_ATTACK else {})
    if defense in ROMOA_DEFENSES:
        if attack == "tpa":                        # TPA's poisoned state moves at γ too (Alg. 2)
            cfg["attack_params"].setdefault("moving_rate", romoa_moving_rate(w, moving_rate))
        cfg.update(protocol="romoa", num_clients=w, tau=tau,
                   num_attackers=0 if attack == NO_ATTACK else max(1, round(w * m / k)),
                   moving_rate=romoa_moving_rate(w, moving_rate),
                   rounds=int(cfg.get("rounds", runs.RunConfig.rounds)) * iterations_per_round)
    else:
        cfg.update(protocol="sync", num_clients=k, clients_per_round=w,
                   num_attackers=0 if attack == NO_ATTACK else m)
    out = runs.RunConfig.from_dict(cfg).to_dict()
    aggregators.get(out["aggregator"], **out["aggregator_params"])   # bad parameters: ValueError
    if attack != NO_ATTACK:
        attacks.get(attack, **out["attack_params"])
    return out


def _rule_name(defense: str) -> str:
    return "romoa" if defense in ROMOA_DEFENSES else defense


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the matrix: a (dataset, defense, attack) and its run configs, one per seed."""

    dataset: str
    defense: str
    attack: str
    configs: tuple[dict, ...]


def grid(dataset: str, defense_list: Sequence[str], attack_list: Sequence[str],
         seeds: Sequence[int], base: Mapping[str, Any], setting: Mapping[str, int] = L2A_SETTING,
         attack_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
         skip: Sequence[tuple[str, str]] = (), **romoa: Any) -> list[Cell]:
    """The cells defense_list × attack_list (minus ``skip`` pairs), every config validated now."""
    for name, items in (("defense_list", defense_list), ("attack_list", attack_list),
                        ("seeds", seeds)):
        if len(items) == 0 or len(set(items)) != len(items):
            raise ValueError(f"{name} must be non-empty without repeats, got {list(items)}")
    unknown = sorted(set(defense_list) - set(defenses()))
    if unknown:
        raise ValueError(f"unknown defenses {unknown}; choose from {defenses()}")
    extra = sorted(set(attack_params or {}) - set(attack_names()))
    if extra:
        raise ValueError(f"attack_params names unknown attacks {extra}")
    bad_skip = [p for p in skip if p[0] not in defense_list or p[1] not in attack_list]
    if bad_skip:
        raise ValueError(f"skip names pairs outside the grid: {bad_skip}")
    out = []
    for d in defense_list:
        for a in attack_list:
            if (d, a) in skip:
                continue
            ap = (attack_params or {}).get(a)
            cfgs = tuple(cell_config(dataset, d, a, s, base, setting, ap, **romoa) for s in seeds)
            out.append(Cell(dataset, d, a, cfgs))
    return out


def _run_each(configs: Sequence[dict]) -> list[Any]:
    out: list[Any] = []
    for c in configs:
        try:
            out.append(runs.run(c, progress=False))
        except (FloatingPointError, ValueError) as err:
            if not is_divergence(err):
                raise
            out.append(err)
    return out


def _run_batch(configs: Sequence[dict], replicas: bool, **kw: Any) -> list[Any]:
    """run_many, or — when one run of the batch fails — each run alone, divergences recorded."""
    try:
        return list(runs.run_many(configs, replicas=replicas, progress=False, **kw))
    except Exception:                           # noqa: BLE001 (a real error re-raises below)
        return _run_each(configs)


def run_grid(cells: Sequence[Cell], *, replicas: bool = True, backend: Optional[str] = None,
             workers: int = 1) -> pd.DataFrame:
    """Run every cell (cached); one row per (dataset, defense, attack, seed), in grid order.

    ``replicas=True``: each cell's seeds are the replicas of one batched federation, here;
    ``replicas=False``: all runs in one :func:`fedlib.runs.run_many` call (``backend="ray"``
    spreads them over a cluster). When a batch fails, its runs are rerun one by one
    (:func:`fedlib.runs.run`, cached under their own keys) and the diverged ones recorded.
    Columns: dataset, defense, attack, seed, final_accuracy (test accuracy of the final model),
    status (``"ok"`` or ``"diverged"``), cached, seconds (the run's time when it ran: for
    replicas, the time of the whole batch).
    """
    if not cells:
        raise ValueError("run_grid needs at least one cell")
    flat = [c for cell in cells for c in cell.configs]
    if replicas:
        results = [r for cell in cells for r in _run_batch(cell.configs, True)]
    else:
        results = _run_batch(flat, False, backend=backend, workers=workers)
    rows, it = [], iter(results)
    for cell in cells:
        for cfg in cell.configs:
            res = next(it)
            ok = not isinstance(res, BaseException)
            rows.append(dict(dataset=cell.dataset, defense=cell.defense, attack=cell.attack,
                             seed=cfg["seed"],
                             final_accuracy=float(res.history["test_accuracy"][-1]) if ok
                             else math.nan,
                             status="ok" if ok else "diverged",
                             cached=bool(res.meta.get("cached", False)) if ok else False,
                             seconds=float(res.meta.get("seconds", math.nan)) if ok else math.nan))
    return pd.DataFrame(rows)


_KEYS = ["dataset", "defense", "attack"]


def summarise(rows: pd.DataFrame, diverged_accuracy: float = 0.0) -> pd.DataFrame:
    """Per (dataset, defense, attack): mean and worst-seed final accuracy over the seeds."""
    missing = sorted(set(_KEYS + ["seed", "final_accuracy", "status"]) - set(rows.columns))
    if missing:
        raise ValueError(f"rows lack the columns {missing}")
    if len(rows) == 0:
        raise ValueError("no rows to summarise")
    bad = sorted(set(rows["status"]) - {"ok", "diverged"})
    if bad:
        raise ValueError(f"unknown status values {bad}")
    acc = rows["final_accuracy"].where(rows["status"] == "ok", float(diverged_accuracy))
    if acc.isna().any():
        raise ValueError("a run with status 'ok' has no final accuracy")
    frame = rows.assign(accuracy=acc, diverged=rows["status"] == "diverged")
    out = frame.groupby(_KEYS, sort=False).agg(
        mean_accuracy=("accuracy", "mean"), worst_seed_accuracy=("accuracy", "min"),
        seeds=("seed", "nunique"), diverged=("diverged", "sum"))
    return out.reset_index()


def worst_case(summary: pd.DataFrame, stat: str = "mean_accuracy",
               tolerance: float = 1e-9) -> pd.DataFrame:
    """Per (dataset, defense): the lowest ``stat`` over the attacks and the attack reaching it.

    ``best_attack`` is the attack with the lowest ``stat`` (the first in grid order on a tie);
    ``tied`` counts the attacks within ``tolerance`` of that value; ``no_attack`` is the
    defense's ``stat`` without attack (NaN when that cell was not run).
    """
    if stat not in ("mean_accuracy", "worst_seed_accuracy"):
        raise ValueError(f"stat must be 'mean_accuracy' or 'worst_seed_accuracy', got {stat!r}")
    rows = []
    for (ds, d), g in summary.groupby(["dataset", "defense"], sort=False):
        att = g[g["attack"] != NO_ATTACK]
        none = g.loc[g["attack"] == NO_ATTACK, stat]
        low = float(att[stat].min()) if len(att) else math.nan
        best = att[att[stat] <= low + tolerance]["attack"].tolist()
        rows.append(dict(dataset=ds, defense=d, worst_case=low,
                         best_attack=best[0] if best else None, tied=len(best),
                         no_attack=float(none.iloc[0]) if len(none) else math.nan))
    return pd.DataFrame(rows)


def matrix(summary: pd.DataFrame, dataset: str, stat: str = "mean_accuracy",
           defense_order: Optional[Sequence[str]] = None,
           attack_order: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Defense × attack table of ``stat`` for one dataset, plus the :data:`WORST_CASE` column.

    Cells that were not run are NaN; the worst case is over the attacks that ran.
    """
    part = summary[summary["dataset"] == dataset]
    if len(part) == 0:
        raise ValueError(f"no rows for dataset {dataset!r}")
    table = part.pivot(index="defense", columns="attack", values=stat)
    table = table.reindex(index=list(defense_order or part["defense"].unique()),
                          columns=list(attack_order or part["attack"].unique()))
    wc = worst_case(part, stat).set_index("defense")["worst_case"]
    table[WORST_CASE] = wc.reindex(table.index)
    return table
