"""The curves of a figure whose attacks may drive the model to NaN/Inf (L2A Figs. 3, 5–8).

fedlib refuses to aggregate or craft non-finite updates and aborts such a run
(:func:`fedlib.runs.run_many` raises). A figure still wants the honest part of the curve: an
aborted curve is re-run round by round (:func:`diverged_curve`) and drawn up to the round that
failed. A run that fails *before any attack ran* (no attack at all, or an RL attack before its
first attack round: the attackers were still honest) is not a result but a fault, and is kept
apart (:attr:`CurveRuns.faults`). One curve = the seeds of one setting, run as the replicas of
one batched federation (:func:`run_seed_group`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from . import summaries

__all__ = ["DivergedCurve", "CurveRuns", "diverged_curve", "run_seed_group", "run_curves",
           "is_divergence"]


def is_divergence(err: BaseException) -> bool:
    """Whether a run's error says an attack drove it to NaN/Inf (the run loop's
    ``FloatingPointError``, or a rule or attack refusing non-finite rows)."""
    return isinstance(err, FloatingPointError) or (isinstance(err, ValueError) and any(
        key in str(err) for key in ("NaN", "non-finite rows")))


class DivergedCurve(NamedTuple):
    """The honest part of an aborted curve: what :func:`diverged_curve` returns."""

    rounds: np.ndarray
    """The evaluated rounds (0 first), up to the last one before the failure."""
    accuracy: np.ndarray
    """Test accuracy at those rounds."""
    failed_round: Optional[int]
    """The round whose step raised (None: the re-run completed)."""
    why: str
    """The first line of the error (or "completed when re-run")."""


def diverged_curve(config: Mapping[str, Any]) -> DivergedCurve:
    """Re-run an aborted config round by round (fedlib.federation.Federation) until it fails."""
    from .federation import Federation
    from .tasks import seeded_subset

    fed = Federation.from_config(config)
    task = fed.task
    idx = seeded_subset(len(task.y_test), config.get("eval_size"), "eval",
                        config["dataset"]).to(task.device)
    x, y = task.x_test[idx], task.y_test[idx]
    rounds, accs = [0], [float(fed.evaluate(x, y)["accuracy"].reshape(-1)[0])]
    total, every = int(config["rounds"]), int(config.get("eval_every", 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(total):
            try:
                fed.step()
            except (ValueError, FloatingPointError) as err:
                return DivergedCurve(np.array(rounds), np.array(accs), int(fed.round),
                                     str(err).splitlines()[0])
            if fed.round % every == 0 or fed.round == total:
                rounds.append(int(fed.round))
                accs.append(float(fed.evaluate(x, y)["accuracy"].reshape(-1)[0]))
    return DivergedCurve(np.array(rounds), np.array(accs), None, "completed when re-run")


def run_seed_group(configs: Sequence[Mapping[str, Any]]) -> tuple[Optional[list], Optional[str]]:
    """The seeds of one curve as the replicas of one federation: (results, None) or (None, why)."""
    if len(configs) == 0:
        raise ValueError("need at least one config (one per seed)")
    from . import runs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return runs.run_many(list(configs), replicas=True, progress=False), None
    except (ValueError, FloatingPointError) as err:   # e.g. an attack drove the model to NaN/Inf
        return None, f"{type(err).__name__}: {str(err).splitlines()[0]}"


@dataclasses.dataclass
class CurveRuns:
    """Every curve of a figure, keyed by tuples whose last element is the attack's name."""

    results: dict = dataclasses.field(default_factory=dict)
    """key → the runs of its seeds (the curves that completed)."""
    aborted: dict = dataclasses.field(default_factory=dict)
    """key → why its batched run aborted."""
    diverged: dict = dataclasses.field(default_factory=dict)
    """key → :class:`DivergedCurve` of an aborted curve whose attack drove the model to NaN/Inf."""
    faults: dict = dataclasses.field(default_factory=dict)
    """key → why an aborted curve failed before any attack ran (not a result: never drawn)."""

    def curve(self, key: Hashable) -> tuple[np.ndarray, np.ndarray]:
        """(evaluated rounds, test accuracy averaged over the seeds) of a completed curve."""
        return summaries.seed_curve(self.results[key], "test_accuracy")

    def final(self, key: Hashable, last: int) -> float:
        """Final accuracy: seed mean of the curve's last ``last`` evaluations (NaN if aborted)."""
        if key not in self.results:
            return float("nan")
        return summaries.seed_tail_mean(self.results[key], "test_accuracy", last)


def _before_attack(attack: str, failed_round: Optional[int], attack_start: int) -> bool:
    return failed_round is not None and (
        attack == "none" or (attack.startswith("rl") and failed_round < attack_start))


def run_curves(keys: Sequence[tuple], setting: Callable[..., Mapping[str, Any]],
               seeds: Sequence[int], attack_start: int) -> CurveRuns:
    """Run every curve ``setting(*key, seed)``; re-run the aborted ones with :func:`diverged_curve`.

    The last element of each key is the attack's name; RL attacks (names starting with ``rl``)
    are honest before round ``attack_start``. Prints what ran and what aborted.
    """
    if len(seeds) == 0:
        raise ValueError("need at least one seed")
    if any(not isinstance(k, tuple) or not k or not isinstance(k[-1], str) for k in keys):
        raise ValueError("every key must be a tuple ending in the attack's name")
    out = CurveRuns()
    start = time.perf_counter()
    for key in keys:
        res, why = run_seed_group([setting(*key, s) for s in seeds])
        if res is None:
            out.aborted[key] = why
        else:
            out.results[key] = res
    hits = sum(r.meta.get("cached", False) for rs in out.results.values() for r in rs)
    print(f"{sum(map(len, out.results.values()))} runs ({hits} from the cache) in "
          f"{time.perf_counter() - start:.1f} s")
    for key, why in out.aborted.items():
        d = diverged_curve(setting(*key, seeds[0]))
        if _before_attack(key[-1], d.failed_round, attack_start):
            out.faults[key] = (f"went non-finite in round {d.failed_round}, before any attack ran "
                               f"({d.why})")
            print(f"NOT A RESULT {key}: the run {out.faults[key]}: the attackers were still "
                  "honest, so this is a fault of the library (e.g. the attackers' simulator "
                  "raising during policy learning), not an effect of the attack; no curve is "
                  "drawn and no claim uses it")
            continue
        out.diverged[key] = d
        print(f"ABORTED {key}: {why}; re-run round by round (seed {seeds[0]}): the model went "
              f"non-finite in round {d.failed_round}, the curve is drawn up to there and ends "
              "with ×")
    return out
