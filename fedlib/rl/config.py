"""``EnvConfig``: everything the attackers' simulator of L2A §4.3 needs, as one validated dataclass.

The simulated server mirrors the real one (the white-box threat model of L2A §3: rule and
parameters, η, K, w, M, B = 128, one local step); benign clients draw their minibatches i.i.d.
from the learned distribution P̃ (``data``); the reward is measured on the attackers' held-out
data; every episode starts from θ₀, the first global model the attackers received (App. E.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from .. import models
from ..flat import ParamSpec

ACTIONS = ("gamma_E", "E_lambda", "full")
STEP_UNITS = ("attack_step", "round")
FLTRUST_OBJECTIVES = ("cosine", "root_loss")
SUPPORTED_RULES = ("mean", "krum", "multi_krum", "median", "trimmed_mean", "clipped_median",
                   "geometric_median", "rfa", "fltrust", "bulyan", "centered_clipping", "romoa")
PROTOCOLS = ("sync", "romoa")
COUNT_RULES = ("krum", "multi_krum", "trimmed_mean", "bulyan")
"""Rules whose parameter f is a number of attackers (L2A §4.3: given the count actually sampled)."""

PRESETS: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "krum": ("gamma_E", {"gamma": (0.0, 10.0), "E": (0.0, 20.0)}),
    "clipped_median": ("gamma_E", {"gamma": (0.0, 10.0), "E": (0.0, 50.0)}),
    "geometric_median": ("gamma_E", {"gamma": (0.0, 10.0), "E": (0.0, 50.0)}),
    "authors_krum": ("gamma_E", {"gamma": (0.1, 9.9), "E": (1.0, 21.0)}),
    "authors_clipped_median": ("gamma_E", {"gamma": (0.1, 29.9), "E": (1.0, 49.0)}),
    "fltrust": ("E_lambda", {"E": (0.0, 20.0), "lambda": (0.0, 1.0)}),
}
"""Action ranges: L2A App. E.1 (``krum``, ``clipped_median``, ``geometric_median``, ``fltrust``)
and the ranges of the authors' code (``authors_krum``, ``authors_clipped_median``)."""

_DEFAULT_PRESET = {"krum": "krum", "multi_krum": "krum", "clipped_median": "clipped_median",
                   "median": "clipped_median", "trimmed_mean": "clipped_median",
                   "geometric_median": "geometric_median", "rfa": "geometric_median",
                   "fltrust": "fltrust", "bulyan": "krum", "mean": "krum",
                   "centered_clipping": "clipped_median", "romoa": "clipped_median"}


def _pair(xy: Any, what: str) -> tuple[Tensor, Tensor]:
    """Validate an (x, y) pair of non-empty tensors with matching length and integer labels."""
    if not (isinstance(xy, (tuple, list)) and len(xy) == 2
            and all(isinstance(t, Tensor) for t in xy)):
        raise ValueError(f"{what} must be a pair (x, y) of tensors")
    x, y = xy
    if len(x) == 0 or len(x) != len(y) or y.dim() != 1:
        raise ValueError(f"{what}: need non-empty x and 1-D y of the same length, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what}: labels must be integer, got {y.dtype}")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: x must be finite floating point")
    return x, y.long()


@dataclass
class EnvConfig:
    """The attackers' simulator (L2A §4.1 MDP, §4.3 simulation, App. E.1 settings); see fields."""

    data: tuple[Tensor, Tensor]
    """P̃ as (x, y): the attackers' data plus reconstructions; benign clients sample from it."""
    holdout: tuple[Tensor, Tensor]
    """The attackers' held-out (x, y): the reward is the increase of the loss on it (§4.1)."""
    theta0: Tensor
    """θ₀ (d,): the first global model the attackers received; every episode starts there."""
    model: str = "synthetic-mlp"
    """``fedlib.models`` name of the federated model."""
    width: float = 1.0
    num_classes: Optional[int] = None
    """None: the model's default class count."""
    aggregator: str = "krum"
    """The server's rule (``fedlib.aggregators`` name)."""
    aggregator_params: dict = field(default_factory=dict)
    """Its parameters. For Krum, multi-Krum, trimmed mean and Bulyan, ``f`` may be an int (the
    server's fixed f) or ``"sampled"`` (default): f = the number of attackers sampled that round,
    capped at the largest f the rule accepts with w uploads."""
    num_clients: int = 100
    """K."""
    clients_per_round: int = 10
    """w: clients the server samples each round, uniformly without replacement."""
    num_attackers: int = 20
    """M: malicious clients among the K."""
    lr: float = 0.01
    """η, the server's and clients' learning rate."""
    batch_size: int = 128
    """B: a benign client's minibatch."""
    local_steps: int = 1
    protocol: str = "sync"
    """The server's protocol: ``"sync"`` (L2A Algorithm 1) or ``"romoa"`` (Romoa's lookahead
    protocol: all K participants upload every iteration, the server aggregates every ``tau``
    iterations; one env step is one iteration, so m = M in every step). Under ``"romoa"`` the
    observation also holds ``"attacker_weight"``, the attackers' total weight in the server's last
    aggregation (for Romoa the sum of their sanitizing factors' means): the threat model assumes
    the server tells each participant the weight its upload received."""
    tau: int = 4
    """τ of ``protocol="romoa"``: iterations between two aggregations."""
    moving_rate: float = 1.0
    """γ of ``protocol="romoa"``: θᵢ ← θᵢ − γ(θᵢ − θ̄) at a sync."""
    horizon: int = 1000
    """H: steps per episode (1,000; 500 for FLTrust in App. E.1)."""
    step_unit: str = "attack_step"
    """``"attack_step"`` (§4.1 literally: one env step per round with ≥ 1 sampled attacker; the
    attacker-free rounds before the next one are simulated inside the step) or ``"round"`` (one
    env step per FL round; in rounds without attackers the action is ignored)."""
    action: Optional[str] = None
    """``"gamma_E"``, ``"E_lambda"`` (FLTrust) or ``"full"`` (the crafted update itself);
    None: the preset's."""
    preset: Optional[str] = None
    """A key of ``PRESETS``; None: chosen from the rule (``"full"`` has no preset)."""
    ranges: Optional[dict] = None
    """Overrides the preset's ranges, e.g. {"gamma": (0, 10), "E": (0, 20)}."""
    search_batch: Optional[int] = None
    """B̃, the local-search minibatch: 200 (500 for ``"E_lambda"``) when None."""
    search_lr: Optional[float] = None
    """Step size of the local-search ascent steps; None: η (the paper does not state it)."""
    trajectories: int = 1
    """G: local-search trajectories averaged (§4.3)."""
    root: Optional[tuple[Tensor, Tensor]] = None
    """FLTrust's root data D₀ as the attackers know it (the server's own, or a q₀-biased sample of
    P̃ when only its sampling is known): the simulated server's Δ₀ and the crafting's g₀ use it."""
    fltrust_objective: str = "cosine"
    """``"cosine"``: (1 − λ)F(θ) + λ·cos(θ_t − θ, g₀); ``"root_loss"``: (1 − λ)F(θ) − λF₀(θ)."""
    full_scale: float = 10.0
    """``"full"``: the action a ∈ [−1, 1]^d is the crafted gradient g̃ = full_scale·a (§4.1's
    a = g̃), uploaded as the delta η·g̃ like every client's (L2A Alg. 1)."""
    time_feature: bool = True
    """True: the observation also holds τ/H and the episode ends with ``terminated=True`` at H
    (the finite-horizon MDP made Markov); False: the paper's state only, ``truncated=True`` at H."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.data = _pair(self.data, "data (P̃)")
        self.holdout = _pair(self.holdout, "holdout")
        if self.root is not None:
            self.root = _pair(self.root, "root")
        for name in ("num_clients", "clients_per_round", "batch_size", "local_steps", "horizon",
                     "trajectories", "tau"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
        M = self.num_attackers
        if isinstance(M, bool) or not isinstance(M, int) or not 1 <= M < self.num_clients:
            raise ValueError(f"num_attackers (M) must be in [1, K) = [1, {self.num_clients}), "
                             f"got {self.num_attackers!r}")
        if self.clients_per_round > self.num_clients:
            raise ValueError(f"clients_per_round (w = {self.clients_per_round}) exceeds "
                             f"num_clients (K = {self.num_clients})")
        for name in ("lr", "full_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        s = self.search_lr
        if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise ValueError(f"search_lr must be a finite number > 0, got {self.search_lr!r}")
        if self.step_unit not in STEP_UNITS:
            raise ValueError(f"step_unit must be one of {STEP_UNITS}, got {self.step_unit!r}")
        if self.fltrust_objective not in FLTRUST_OBJECTIVES:
            raise ValueError(f"fltrust_objective must be one of {FLTRUST_OBJECTIVES}, "
                             f"got {self.fltrust_objective!r}")
        rule = str(self.aggregator).lower()
        if rule not in SUPPORTED_RULES:
            raise ValueError(f"aggregator {self.aggregator!r} cannot be simulated; choose one of "
                             f"{SUPPORTED_RULES}")
        self._validate_protocol(rule)
        self.aggregator = rule
        self._resolve_action()
        if self.search_batch is None:
            self.search_batch = 500 if self.action == "E_lambda" else 200
        if not isinstance(self.search_batch, int) or self.search_batch < 1:
            raise ValueError(f"search_batch must be an integer ≥ 1, got {self.search_batch!r}")
        if (rule == "fltrust" or self.action == "E_lambda") and self.root is None:
            raise ValueError("FLTrust and the E_lambda action need root=(x, y): the root data "
                             "(or the attackers' q₀-biased approximation of it)")
        spec = self.spec()
        if not isinstance(self.theta0, Tensor) or self.theta0.shape != (spec.dim,):
            raise ValueError(f"theta0 must be a tensor of shape ({spec.dim},) for model "
                             f"{self.model!r}, got {getattr(self.theta0, 'shape', self.theta0)}")
        if not bool(torch.isfinite(self.theta0).all()):
            raise ValueError("theta0 contains NaN or Inf")
        classes = spec.shapes[-1][0]
        for what, (_, y) in (("data", self.data), ("holdout", self.holdout)):
            if int(y.min()) < 0 or int(y.max()) >= classes:
                raise ValueError(f"{what} labels must lie in [0, {classes})")

    def _validate_protocol(self, rule: str) -> None:
        """Romoa's rule only under its lookahead protocol; that protocol's fixed settings."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if rule == "romoa" and self.protocol != "romoa":
            raise ValueError("aggregator 'romoa' cannot be simulated under protocol 'sync': "
                             "use protocol='romoa' (its sanitizing factors need lookahead uploads)")
        if self.protocol == "romoa":
            if self.clients_per_round != self.num_clients or self.local_steps != 1:
                raise ValueError("protocol 'romoa': every participant uploads every iteration "
                                 "after one local step (clients_per_round = num_clients, "
                                 "local_steps = 1)")
            if rule == "fltrust":
                raise ValueError("FLTrust needs a server update, which protocol 'romoa' does not "
                                 "provide")
            if not (isinstance(self.moving_rate, (int, float)) and 0 <= self.moving_rate <= 1):
                raise ValueError(f"moving_rate must be in [0, 1], got {self.moving_rate!r}")

    def _resolve_action(self) -> None:
        """Fill ``action``, ``preset`` and ``ranges`` from each other and validate them."""
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.action is not None and self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if self.action == "full":
            if self.preset is not None or self.ranges is not None:
                raise ValueError('the "full" action has no ranges: its box is '
                                 '[-full_scale, full_scale]^d')
            return
        preset = self.preset
        if preset is None:
            preset = "fltrust" if self.action == "E_lambda" else _DEFAULT_PRESET[self.aggregator]
            if self.action == "gamma_E" and preset == "fltrust":
                preset = "krum"
        action, base = PRESETS[preset]
        if self.action is not None and self.action != action:
            raise ValueError(f"preset {preset!r} is for action {action!r}, not {self.action!r}")
        self.action, self.preset = action, preset
        ranges = dict(base)
        for k, v in (self.ranges or {}).items():
            if k not in base:
                raise ValueError(f"unknown range {k!r} for action {action!r}; keys: {sorted(base)}")
            lo, hi = (float(v[0]), float(v[1]))
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"range {k!r} must be 0 ≤ low ≤ high (finite), got {v!r}")
            ranges[k] = (lo, hi)
        if "lambda" in ranges and ranges["lambda"][1] > 1:
            raise ValueError("lambda must lie in [0, 1]")
        self.ranges = ranges

    def spec(self) -> ParamSpec:
        """The flat-parameter layout of the model."""
        return ParamSpec.of(self.build_model())

    def build_model(self) -> torch.nn.Module:
        """A fresh model template (its own parameters are never used; the global RNG is spared)."""
        with torch.random.fork_rng(devices=[]):
            return models.build(self.model, num_classes=self.num_classes, width=self.width)

    def rule_key(self) -> str:
        """The aggregator's canonical name (``rfa`` → ``geometric_median``)."""
        return "geometric_median" if self.aggregator == "rfa" else self.aggregator


def synthetic_env_config(num_samples: int = 500, holdout_size: int = 500, seed: int = 0,
                         **overrides: Any) -> EnvConfig:
    """The synthetic 2-D set of L2A App. E.2 as a simulator: P̃ = the first ``num_samples``
    training points, held-out = the first ``holdout_size`` test points, θ₀ = a seeded init of the
    28-parameter MLP, η = 0.05, the ``"full"`` action; ``overrides`` replace any field."""
    from .. import data
    from ..engine import seed_for
    from ..flat import flatten_module

    train, test = data.load("synthetic")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, "rl-theta0"))
        theta0 = flatten_module(models.build("synthetic-mlp"))
    base: dict[str, Any] = dict(data=(train.x[:num_samples], train.y[:num_samples]),
                                holdout=(test.x[:holdout_size], test.y[:holdout_size]),
                                theta0=theta0, model="synthetic-mlp", lr=0.05, action="full",
                                seed=seed)
    base.update(overrides)
    return EnvConfig(**base)


def approximate_root(data: tuple[Tensor, Tensor], size: int = 100, q0: float | None = None,
                     seed: int = 0, bias_class: int = 0, num_classes: int | None = None
                     ) -> tuple[Tensor, Tensor]:
    """FLTrust's root set as attackers who know only how it is sampled build it (L2A App. E.1):
    ``size`` samples of P̃ with bias q₀ towards ``bias_class`` (q₀ = 1/C, the default: unbiased).
    """
    from ..data import root_set

    x, y = _pair(data, "data (P̃)")
    c = int(y.max()) + 1 if num_classes is None else num_classes
    idx = root_set(y.cpu().numpy(), size, 1.0 / c if q0 is None else q0, seed=seed,
                   bias_class=bias_class, num_classes=c)
    idx = torch.as_tensor(idx, dtype=torch.long, device=y.device)
    return x[idx], y[idx]
