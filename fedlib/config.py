"""The run configuration: one plain, validated dataclass whose dict form is the cache key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["RunConfig", "device_of"]


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
        self._validate_protocol()

    def _validate_protocol(self) -> None:
        """Reject options the chosen protocol would silently ignore, and rules it cannot serve."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if self.protocol == "romoa":
            ignored = [k for k in ("local_steps", "shared_noise")
                       if getattr(self, k) != defaults[k]]
            if self.clients_per_round not in (None, self.num_clients):
                ignored.append("clients_per_round")
        else:
            ignored = [k for k in ("tau", "moving_rate") if getattr(self, k) != defaults[k]]
        if ignored:
            raise ValueError(f"protocol {self.protocol!r} does not use {ignored}: in Romoa's "
                             "protocol every participant takes one step and uploads every "
                             "iteration; tau and moving_rate belong to Romoa's protocol only")
        if self.protocol == "romoa":
            from . import aggregators
            if getattr(aggregators.get(self.aggregator, **self.aggregator_params),
                       "needs_server_update", False):
                raise ValueError(f"aggregator {self.aggregator!r} needs a server update (a root "
                                 "set), which only protocol 'sync' provides")

    def to_dict(self) -> dict:
        """The plain dict form (the cache key's content)."""
        return dataclasses.asdict(self)



def device_of(name: str) -> torch.device:
    """Resolve "auto" to CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
