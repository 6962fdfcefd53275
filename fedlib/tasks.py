"""Build what a run config describes: the data, the partition, the model template, the attack and
FLTrust's server update — the pieces a :class:`fedlib.federation.Federation` is made of."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import data, engine, models
from .config import RunConfig, device_of
from .flat import ParamSpec

__all__ = ["load_data", "build_task", "build_attack", "server_update_fn", "seeded_subset"]


def seeded_subset(n: int, size: Optional[int], *keys) -> Tensor:
    if size is None or size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(engine.seed_for(*keys))
    return torch.randperm(n, generator=g)[:size].sort().values


def load_data(cfg: RunConfig) -> tuple[Any, Any]:
    """The (train, test) datasets of ``cfg`` (loaded once, shared by replicas)."""
    return data.load(cfg.dataset)


def build_task(cfg: RunConfig, loaded: Optional[tuple[Any, Any]] = None) -> engine.Task:
    """Load the data, partition it and build the model template for ``cfg`` (global RNG kept)."""
    dev = device_of(cfg.device)
    train, test = loaded if loaded is not None else load_data(cfg)
    keep = seeded_subset(len(train), cfg.train_size, "train", cfg.dataset, cfg.seed)
    x_train, y_train = train.x, train.y  # the whole set is shared by replicas, not copied
    if len(keep) < len(train):
        x_train, y_train = train.x[keep], train.y[keep]
    parts = data.partition(y_train.numpy(), cfg.num_clients, cfg.partition, seed=cfg.seed,
                           q=cfg.q, alpha=cfg.alpha)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(engine.seed_for(cfg.seed, "init"))
        model = models.build(cfg.model, num_classes=train.num_classes, width=cfg.width).to(dev)
    return engine.Task(model=model, spec=ParamSpec.of(model), x_train=x_train.to(dev),
                       y_train=y_train.to(dev), x_test=test.x.to(dev), y_test=test.y.to(dev),
                       clients=[torch.as_tensor(p, dtype=torch.long, device=dev) for p in parts],
                       num_classes=train.num_classes, device=dev)


def build_attack(cfg: RunConfig, task: engine.Task) -> Any:
    """The attack object ``cfg`` names, prepared for ``task`` (None for "none")."""
    if cfg.attack in (None, "none"):
        return None
    from . import attacks
    attack = attacks.get(cfg.attack, **cfg.attack_params)
    if callable(getattr(attack, "prepare", None)):
        attack.prepare(task)
    return attack


def server_update_fn(cfg: RunConfig, task: engine.Task, seed: int) -> Callable[[Tensor], Tensor]:
    """FLTrust's server update Δ₀(θ) = η·∇F(θ; D₀) on the root set of replica ``seed``."""
    q0 = cfg.root_q0 if cfg.root_q0 is not None else 1.0 / task.num_classes
    idx = data.root_set(task.y_train.cpu().numpy(), cfg.root_size, q0, seed=seed)
    idx = torch.as_tensor(idx, dtype=torch.long, device=task.device)
    x0, y0 = task.x_train[idx], task.y_train[idx]
    return lambda theta: cfg.lr * engine.gradient(task, theta, x0, y0)


