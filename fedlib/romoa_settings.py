"""Romoa's evaluation settings (Romoa §2.2 "Attack Evaluation" and §5) as run configs.

Every Romoa notebook builds its runs here, so that two notebooks asking for the same setting
produce the *same* config dict and the second one is a cache hit of :func:`fedlib.runs.run`
(Figs. 5 and 7 share their runs, so do Figs. 6 and 8, and Table 1's n = 10 / one-adversary
cells are those runs again).

**The paper's default task** (§2.2): n = 10 participants, one adversary (participant 0),
i.i.d. data, cross-entropy loss, SGD with learning rate 0.001 and batch size 64, the MNIST CNN
of appendix Fig. 9 (``"romoa-mnist"``) or the CIFAR-10 network of Fig. 10 (``"romoa-cifar"``).

**One protocol for every defense.** Romoa is defined together with its asynchronous protocol
(Algorithms 1–2: every participant takes one local SGD step per iteration and uploads it; the
server aggregates every τ iterations, τ = 4 as in Fig. 3, and each participant moves towards
the new global model at the moving rate γ, θᵢ ← θᵢ − γ(θᵢ − θ̄), Algorithm 2 line 11). The
paper compares Krum and RFA "in the same settings", so
every defense here runs in that protocol (``protocol="romoa"``): the rules without state
(mean, Krum, RFA) simply aggregate the τ-step paths Δᵢ = θ̄ − θᵢ at the sync points and
ignore the lookahead uploads in between, which only Romoa uses (its sanitizing factors are
updated every iteration, Algorithm 2 lines 16–19). Iterations, not rounds, are counted:
``rounds`` = T of Algorithm 2.

**Moving rate γ** (:func:`moving_rate`, argument ``moving_rate`` of :func:`romoa_setting`).
The paper prints no value for the moving rate; its only printed value of the symbol γ is
§3.2's "generally assuming γ = 1/n if no further explanation is given" (where γ is the
selection ratio of Eq. 4). Read literally, the shared symbol gives the moving rate 1/n, which
is the default here (``"1/n"``); γ = 1 (every participant adopts the global model, ordinary
FL) is the other reading, named by its value. Both are run by ``romoa_ablation``; every Romoa
notebook has γ as a parameter and prints it in its figure titles.

**Defenses** (:data:`DEFENSES`, :func:`defense_config`):

==================== =================================================================
``baseline``         plain averaging, ``fedlib.aggregators.get("mean")`` (Algorithm 1 line 16)
``romoa-literal``    :class:`fedlib.romoa.Romoa` with ``reading="literal"`` (Eqs. 4–11 as
                     printed; also what ``"romoa"`` alone means, as in ``aggregators.get``)
``romoa-calibrated`` :class:`fedlib.romoa.Romoa` with ``reading="calibrated"`` (the reading
                     that behaves as the paper reports; see ``fedlib.romoa``)
``rfa``              RFA = the smoothed-Weiszfeld geometric median (``"geometric_median"``)
``krum``             Krum with f = the number of adversaries, clipped to the largest f Krum
                     accepts, ⌊(n − 3)/2⌋ (Krum needs n > 2f + 2): Table 1's n = 10 with 4
                     adversaries runs Krum with f = 3, n = 20 / 9 with f = 8, n = 100 / 49
                     with f = 48, n = 200 / 99 with f = 98 (:func:`krum_f`)
==================== =================================================================

**Attacks** (:func:`attack_config`): ``"upa"`` — Fang et al.'s local model poisoning (Romoa
Eq. 2, :class:`fedlib.attacks.UPA`: the Krum attack against Krum, the trimmed-mean attack
against every other rule), crafted in the space of ``upa_space``: ``"update"`` (the default:
the deviation is taken on the uploads, as Fang et al.'s released code does) or ``"model"``
(on the local models' parameters, Fang et al.'s printed description; on small models the
crafted upload is then far larger than the benign ones); ``"adaptive"`` — the γ-search that
queries the server's actual rule (:class:`fedlib.attacks.RuleSearch`; against Romoa it
previews Algorithm 2 on a copy of the sanitizing factors), so that every defense, not only
Krum, faces an attack tailored to it; ``"tpa"`` — Bhagoji et al.'s targeted poisoning with explicit
boosting (Romoa Eq. 3, :class:`fedlib.attacks.TPA`) flipping 6 → 3 on MNIST and frog → bird
(indices 6 → 2) on CIFAR-10, ``"none"``. Every attack runs at full dosage, stealth factor
α = 1 (§2.2; the paper does not give the α of its evaluation). TPA's boost is omitted, as
§2.2 states (``attack_params={"boost": "n/m"}`` restores Bhagoji's explicit boosting). In
Romoa's protocol TPA keeps a persistent poisoned local state "using the same training
setting as others": one poisoned local step per iteration, so its upload at lookahead
iteration k is a k-step path like the honest ones, and at a sync it moves towards θ̄ at the
same γ (``moving_rate`` is passed to the attack). UPA and the adaptive attack need no
training: they craft from the benign uploads.

**Error rate** (§2.2, :func:`error_rate`): UPA — one minus the test accuracy; TPA — "the
attack confidence of the target class", the mean softmax probability of the poison label
on the target samples (``target_poison_confidence``); the share of targets misclassified
(``target_error``) is reported beside it. With no attack it is 1 − test accuracy (Table 2).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from .runs import RunConfig

__all__ = [
    "PAPER_DEFAULTS", "MODELS", "DEFENSES", "DEFENSE_LABELS", "ATTACKS", "TABLE1_GRID",
    "TPA_LABELS", "MOVING_RATES", "UPA_SPACES", "ROMOA_CHANGES", "moving_rate", "krum_f",
    "defense_config", "attack_config", "romoa_setting", "error_rate", "error_curve",
    "defense_style", "table1_cells", "canonical_defense", "FEDAVG_SCENARIOS", "fedavg_setting",
]

PAPER_DEFAULTS: dict[str, Any] = dict(protocol="romoa", tau=4, lr=0.001, batch_size=64,
                                      partition="iid", seed=0)
"""§2.2's default FL task (plus τ = 4 of Fig. 3); n, γ and the adversaries are arguments."""

MOVING_RATES: tuple[str, ...] = ("1/n", "1")
"""The named moving rates: the paper's only printed γ (1/n, the default) and full adoption."""

UPA_SPACES: tuple[str, ...] = ("update", "model")
"""Where Fang's trimmed-mean attack crafts: on the uploads (default) or the model parameters."""

MODELS: dict[str, str] = {"mnist": "romoa-mnist", "cifar10": "romoa-cifar"}
"""The appendix architectures: Fig. 9 (MNIST) and Fig. 10 (CIFAR-10)."""

DEFENSES: tuple[str, ...] = ("baseline", "romoa-literal", "romoa-calibrated", "rfa", "krum")
"""Every defense of Figs. 5–8 and Table 1, Romoa in both readings."""

DEFENSE_LABELS: dict[str, str] = {"baseline": "baseline (mean)", "romoa-literal": "Romoa (literal)",
                                  "romoa-calibrated": "Romoa (calibrated)", "rfa": "RFA",
                                  "krum": "Krum"}
"""Legend / table labels. "literal" and "calibrated" are the two presets of
:class:`fedlib.romoa.Romoa`; against UPA the calibrated preset's work is done by its cluster
penalty (Eqs. 8–10 replaced), not by its measurement calibrations (``romoa_ablation``)."""

ROMOA_CHANGES: dict[str, dict[str, str]] = {
    "Eq. 4 ranks the path": {"selection": "path"},
    "Eq. 5 sub-vector cosine": {"elementwise": "cosine"},
    "Eq. 7 Pearson's r": {"pearson": "centered"},
    "robust bandwidth": {"bandwidth": "robust"},
    "cluster penalty (Eqs. 8–10)": {"generating": "cluster_penalty"},
}
"""The five differences between the ``literal`` and ``calibrated`` presets, each a named
option of :class:`fedlib.romoa.Romoa`: four measurement calibrations and the replacement of
the printed generating function."""

ATTACKS: tuple[str, ...] = ("none", "upa", "tpa", "adaptive")

TPA_LABELS: dict[str, tuple[int, int]] = {"mnist": (6, 3), "cifar10": (6, 2)}
"""(true, poison) label of TPA's targets: Fig. 2's 6 → 3 (MNIST) and frog → bird (CIFAR-10,
0-based indices 6 → 2; the text's "7 → 3" counts from 1)."""

TABLE1_GRID: dict[int, tuple[int, ...]] = {10: (1, 3, 4), 20: (1, 6, 9), 100: (1, 33, 49),
                                           200: (1, 66, 99)}
"""Table 1: participants n → the adversary counts of its columns (all < ⌈n/2⌉)."""

_ALIASES = {"mean": "baseline", "fedavg": "baseline", "romoa": "romoa-literal",
            "geometric_median": "rfa"}
_FIXED = ("dataset", "num_clients", "aggregator", "aggregator_params", "attack",
          "attack_params", "num_attackers")


def canonical_defense(defense: str) -> str:
    """A defense's name in :data:`DEFENSES` (aliases such as ``"mean"`` or ``"romoa"`` resolved)."""
    key = str(defense).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, _ALIASES.get(key.replace("-", "_"), key))
    if key not in DEFENSES:
        raise ValueError(f"unknown defense {defense!r}; choose from {DEFENSES} "
                         f"(aliases: {sorted(_ALIASES)})")
    return key


def krum_f(n: int, adversaries: int) -> int:
    """Krum's f for Romoa §5: the number of adversaries, clipped to ⌊(n − 3)/2⌋ (n > 2f + 2)."""
    if not isinstance(n, int) or n < 3:
        raise ValueError(f"Krum needs at least 3 participants (n > 2f + 2 with f ≥ 0), got n = {n}")
    if not isinstance(adversaries, int) or adversaries < 0:
        raise ValueError(f"adversaries must be an integer ≥ 0, got {adversaries!r}")
    return min(adversaries, (n - 3) // 2)


def moving_rate(n: int, value: Any = "1/n") -> float:
    """Moving rate γ of Algorithm 2 line 11: ``"1/n"`` (the printed γ), ``"1"`` or a float."""
    if isinstance(value, str):
        if value not in MOVING_RATES:
            raise ValueError(f"moving_rate must be one of {MOVING_RATES} or a number in (0, 1], "
                             f"got {value!r}")
        return 1.0 / n if value == "1/n" else 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"moving_rate must be one of {MOVING_RATES} or a number in (0, 1], "
                         f"got {value!r}")
    return float(value)


_moving_rate = moving_rate          # romoa_setting's argument of the same name shadows it


def defense_config(defense: str, n: int = 10, adversaries: int = 1,
                   romoa_options: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``{"aggregator": …, "aggregator_params": …}`` of a Romoa §5 defense (see the module doc).

    ``romoa_options`` are named options of :class:`fedlib.romoa.Romoa` added to a Romoa
    preset (e.g. ``{"generating": "cluster_penalty"}``, see :data:`ROMOA_CHANGES`).
    """
    key = canonical_defense(defense)
    extra = dict(romoa_options or {})
    if extra and not key.startswith("romoa-"):
        raise ValueError(f"romoa_options apply to the Romoa defenses only, not {defense!r}")
    if key == "baseline":
        return {"aggregator": "mean", "aggregator_params": {}}
    if key.startswith("romoa-"):
        from .romoa import Romoa
        params = {"reading": key.split("-", 1)[1], **extra}
        Romoa(**params)                                  # unknown/invalid options: ValueError now
        return {"aggregator": "romoa", "aggregator_params": params}
    if key == "rfa":
        return {"aggregator": "geometric_median", "aggregator_params": {}}
    return {"aggregator": "krum", "aggregator_params": {"f": krum_f(n, adversaries)}}


def attack_config(attack: str, dataset: str = "mnist", adversaries: int = 1,
                  params: Optional[Mapping[str, Any]] = None,
                  upa_space: str = "update") -> dict[str, Any]:
    """``{"attack", "attack_params", "num_attackers"}`` for UPA (Eq. 2), TPA (Eq. 3), the
    adaptive γ-search (:class:`fedlib.attacks.RuleSearch`) or none.

    ``params`` are extra keyword arguments of the attack (e.g. ``{"stealth": 0.5}``); TPA's
    labels default to :data:`TPA_LABELS` of ``dataset``; UPA crafts in ``upa_space``.
    """
    if upa_space not in UPA_SPACES:
        raise ValueError(f"upa_space must be one of {UPA_SPACES}, got {upa_space!r}")
    key = str(attack).strip().lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose from {ATTACKS}")
    extra = dict(params or {})
    if key == "none":
        if extra:
            raise ValueError(f"attack 'none' takes no parameters, got {sorted(extra)}")
        return {"attack": "none", "attack_params": {}, "num_attackers": 0}
    if not isinstance(adversaries, int) or adversaries < 1:
        raise ValueError(f"attack {key!r} needs adversaries ≥ 1, got {adversaries!r}")
    out: dict[str, Any] = {}
    if key == "upa":
        out = {"space": upa_space}
    if key == "tpa" and not {"source", "poison"} <= set(extra):
        if dataset not in TPA_LABELS:
            raise ValueError(f"no TPA labels for dataset {dataset!r}; pass params=dict(source=…, "
                             f"poison=…) or use one of {sorted(TPA_LABELS)}")
        source, poison = TPA_LABELS[dataset]
        out = {"source": source, "poison": poison}
    out.update(extra)
    name = "rule_search" if key == "adaptive" else key
    return {"attack": name, "attack_params": out, "num_attackers": adversaries}


def romoa_setting(dataset: str = "mnist", defense: str = "baseline", attack: str = "upa",
                  n: int = 10, adversaries: int = 1,
                  profile_overrides: Optional[Mapping[str, Any]] = None,
                  attack_params: Optional[Mapping[str, Any]] = None, *,
                  moving_rate: Any = "1/n", upa_space: str = "update",
                  romoa_options: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The full, validated run config of one Romoa §5 setting (a plain dict for ``runs.run``).

    Starts from :data:`PAPER_DEFAULTS` and the dataset's appendix model, adds the defense
    (:func:`defense_config`) and the attack (:func:`attack_config`, participants
    0..adversaries−1 malicious; none for ``attack="none"``, where ``adversaries`` still sets
    Krum's f; UPA crafts in ``upa_space``; TPA gets the moving rate), the moving rate γ
    (:func:`moving_rate`: ``"1/n"`` by default, ``"1"`` or a float) and ``romoa_options``
    (Romoa defenses only), then applies ``profile_overrides`` — any other
    :class:`fedlib.runs.RunConfig`
    field (``rounds``, ``lr``, ``batch_size``, ``width``, ``eval_every``, ``eval_size``,
    ``train_size``, ``train_eval_size``, ``strategy``, ``partition``, ``seed``, ``model``…).
    The keys fixed by the arguments (dataset, n, defense, attack) cannot be overridden
    (ValueError). Returns every RunConfig field, so equal settings give equal dicts.
    """
    if dataset not in MODELS:
        raise ValueError(f"unknown dataset {dataset!r} for Romoa's evaluation; choose from "
                         f"{sorted(MODELS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    overrides = dict(profile_overrides or {})
    names = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown profile keys {unknown}; valid keys: {sorted(names)}")
    fixed = sorted(set(overrides) & (set(_FIXED) | {"moving_rate"}))
    if fixed:
        raise ValueError(f"profile keys {fixed} are set by romoa_setting's arguments "
                         "(dataset, defense, attack, n, adversaries, attack_params, moving_rate)")
    gamma = _moving_rate(n, moving_rate)
    cfg: dict[str, Any] = dict(PAPER_DEFAULTS, dataset=dataset, model=MODELS[dataset],
                               num_clients=n)
    cfg.update(defense_config(defense, n, adversaries, romoa_options))
    cfg.update(attack_config(attack, dataset, adversaries, attack_params, upa_space))
    cfg.update(overrides)
    if cfg["protocol"] == "romoa":                     # γ belongs to Romoa's protocol only
        cfg["moving_rate"] = gamma
    if cfg["attack"] == "tpa" and cfg["protocol"] == "romoa" \
            and "moving_rate" not in cfg["attack_params"]:
        cfg["attack_params"] = dict(cfg["attack_params"], moving_rate=cfg["moving_rate"])
    return RunConfig.from_dict(cfg).to_dict()


FEDAVG_SCENARIOS: tuple[str, ...] = ("no attack", "UPA", "TPA")
"""The curves of Romoa Figs. 1–2 (undefended FedAvg)."""


def fedavg_setting(dataset: str, scenario: str, profile: Mapping[str, Any], *,
                   tpa: Mapping[str, Any], upa: Mapping[str, Any]) -> dict[str, Any]:
    """The run config of one curve of Romoa Figs. 1–2: FedAvg (synchronous rounds, plain mean,
    i.i.d. data) under no attack, UPA (Eq. 2) or TPA (Eq. 3, :data:`TPA_LABELS` of the dataset).

    "no attack" is TPA with stealth α = 0: by Romoa's definition the adversary then uploads
    exactly its honest update (``fedlib.attacks.base.stealth_mix``), so the run equals plain
    FedAvg and still records the target samples' confidences. ``profile`` holds every other
    :class:`fedlib.runs.RunConfig` field (model, width, rounds, num_attackers, …); ``tpa`` and
    ``upa`` are the attacks' parameters.
    """
    if scenario not in FEDAVG_SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {FEDAVG_SCENARIOS}")
    if dataset not in TPA_LABELS:
        raise ValueError(f"no TPA labels for dataset {dataset!r}; choose from {sorted(TPA_LABELS)}")
    fixed = sorted(set(profile) & {"dataset", "protocol", "partition", "aggregator", "attack",
                                   "attack_params"})
    if fixed:
        raise ValueError(f"profile keys {fixed} are set by fedavg_setting")
    source, poison = TPA_LABELS[dataset]
    targeted = dict(source=source, poison=poison, **tpa)
    attack, params = {"no attack": ("tpa", dict(targeted, stealth=0.0)),
                      "UPA": ("upa", dict(upa)),
                      "TPA": ("tpa", dict(targeted, stealth=1.0))}[scenario]
    return dict(profile, dataset=dataset, protocol="sync", partition="iid", aggregator="mean",
                attack=attack, attack_params=params)


def _history(result: Any) -> Mapping[str, Sequence[Any]]:
    h = getattr(result, "history", result)
    if not isinstance(h, Mapping) or "test_accuracy" not in h:
        raise ValueError("expected a fedlib.runs.Result or its history dict")
    return h


def error_curve(result: Any, attack: str) -> list[float]:
    """Romoa §2.2 error rate per evaluation: 1 − accuracy (UPA, adaptive, none), TPA: confidence."""
    h = _history(result)
    key = str(attack).lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose from {ATTACKS}")
    if key == "tpa":
        if "target_poison_confidence" not in h:
            raise ValueError("this run recorded no target confidences (not a TPA run)")
        return [float(v) for v in h["target_poison_confidence"]]
    return [1.0 - float(v) for v in h["test_accuracy"]]


def error_rate(result: Any, attack: str, last: int = 1) -> float:
    """Romoa §2.2 error rate of a run: the mean of its last ``last`` evaluations (error_curve)."""
    if not isinstance(last, int) or last < 1:
        raise ValueError(f"last must be a positive integer, got {last!r}")
    curve = error_curve(result, attack)
    tail = curve[-last:]
    return sum(tail) / len(tail)


def defense_style(defense: str) -> dict[str, Any]:
    """Matplotlib keywords (colour, line style, label) of a defense, the same in every figure."""
    from .plotting import color
    key = canonical_defense(defense)
    base = {"baseline": "baseline", "romoa-literal": "romoa", "romoa-calibrated": "romoa",
            "rfa": "rfa", "krum": "krum"}[key]
    ls = {"romoa-literal": ":", "krum": "-.", "rfa": "--"}.get(key, "-")
    return {"color": color(base), "ls": ls, "label": DEFENSE_LABELS[key]}


def table1_cells(ns: Sequence[int], max_adversaries: Optional[Mapping[int, int]] = None
                 ) -> list[tuple[int, int]]:
    """Table 1's (n, adversaries) columns for the given n, optionally capped per n (smoke grids)."""
    out = []
    for n in ns:
        if n not in TABLE1_GRID:
            raise ValueError(f"Table 1 has no n = {n}; it has {sorted(TABLE1_GRID)}")
        cap = None if max_adversaries is None else max_adversaries.get(n)
        out += [(n, m) for m in TABLE1_GRID[n] if cap is None or m <= cap]
    return out
