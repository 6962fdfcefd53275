"""Local training and evaluation on flat parameter vectors.

A :class:`Task` bundles a model *template* (its structure; its own parameters are never
used), the data and the clients' index sets. Every function here takes parameters as flat
vectors θ (d,) or stacks (n, d) and calls the model through ``torch.func.functional_call``.

Local training has two strategies that compute the same thing:

* ``"sequential"``: one client after another (the fastest on a CPU, where one client's
  batch already keeps the cores busy);
* ``"vmap"``: all clients at once with ``torch.func.vmap(grad(loss))`` (the fastest on a GPU).

``"auto"`` picks sequential on CPU and vmap on CUDA (see ``benchmarks/engine.py``). Each
client draws its minibatches from its own counter-based random stream
(:mod:`fedlib.batch_stream`), so the batches do not depend on the strategy, on which other
clients were sampled or on how many replicas run together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .batch_stream import ClientTable
from .flat import ParamSpec

STRATEGIES = ("auto", "sequential", "vmap")


@dataclass
class Task:
    """A model template, its parameter layout, the data and each client's sample indices."""

    model: nn.Module
    spec: ParamSpec
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    clients: list[Tensor]
    num_classes: int
    device: torch.device
    iid_pool: bool = False
    """True: clients have no partitions; every client's minibatches are i.i.d. draws (with
    replacement) from the whole training set, one stream per replica and round (the attackers'
    simulator of L2A §4.3, whose benign clients all sample the learned distribution P̃)."""

    @cached_property
    def client_table(self) -> ClientTable:
        """The clients' index sets as one padded table (built once, for batched sampling)."""
        return ClientTable(self.clients)

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits of the model with flat parameters θ (d,) on inputs x."""
        return functional_call(self.model, self.spec.unflatten(theta), (x,))

    def loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy F(θ; x, y) (Romoa Eq. 1's 𝓛)."""
        return F.cross_entropy(self.forward(theta, x), y)


def seed_for(*keys: int | str) -> int:
    """A 63-bit seed derived from ``keys`` (stable across runs, platforms and versions)."""
    digest = hashlib.sha256(repr(tuple(keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_base(seed: int, round: int) -> int:
    """The base of run ``seed``'s minibatch streams in round ``round`` (:mod:`.batch_stream`)."""
    return seed_for(seed, "batches", round)


def draw_batch(n_items: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` positions in [0, n_items): without replacement when there are enough."""
    if n_items <= 0:
        raise ValueError("cannot draw a minibatch from an empty local dataset")
    if n_items >= batch_size:
        return torch.randperm(n_items, generator=generator)[:batch_size]
    return torch.randint(n_items, (batch_size,), generator=generator)


def sample_batches(task: Task, client_ids: Sequence[int] | Tensor, round: int, steps: int,
                   batch_size: int, seed: int) -> Tensor:
    """(n, steps, B) indices into the training set: each client's minibatches for a round
    (:mod:`.batch_stream`; with ``task.iid_pool`` one stream for the run and round)."""
    ids = torch.as_tensor(client_ids, dtype=torch.long).cpu()
    if task.iid_pool:
        g = torch.Generator().manual_seed(seed_for(seed, "pool-batches", round))
        out = torch.randint(len(task.x_train), (len(ids), steps, batch_size), generator=g)
    else:
        bases = torch.full_like(ids, batch_base(seed, round))
        out = task.client_table.batches(ids, ids, bases, steps, batch_size)
    return out.to(task.device)


def _flat_grad_fn(task: Task):
    """(θ, x, y) ↦ ∇θ F(θ; x, y) as a flat vector, a pure function ``vmap`` can batch."""
    def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(task.model, params, (x,)), y)

    g = grad(loss)

    def flat_grad(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return task.spec.flatten(g(task.spec.unflatten(theta), x, y))

    return flat_grad


def _sgd_step_fn(task: Task, ascent: bool = False):
    """θ ↦ θ ∓ η ∇F(θ; x, y) on a flat vector, as a pure function of (θ, x, y, η)."""
    flat_grad = _flat_grad_fn(task)
    sign = -1.0 if ascent else 1.0

    def step(theta: Tensor, x: Tensor, y: Tensor, lr: float) -> Tensor:
        return theta - (sign * lr) * flat_grad(theta, x, y)

    return step


def resolve_strategy(strategy: str, device: torch.device) -> str:
    """The local-training strategy ``"auto"`` stands for on ``device``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "auto":
        return "vmap" if torch.device(device).type == "cuda" else "sequential"
    return strategy


def local_sgd(task: Task, theta: Tensor, batches: Tensor, lr: float,
              strategy: str = "auto") -> Tensor:
    """Each client takes ``steps`` SGD steps from its row of θ (n, d) on batches (n, steps, B)."""
    if theta.dim() != 2 or theta.shape[0] != batches.shape[0]:
        raise ValueError(f"theta must be (n, d) with n = {batches.shape[0]}, "
                         f"got {tuple(theta.shape)}")
    strategy = resolve_strategy(strategy, theta.device)
    step = _sgd_step_fn(task)
    task.model.train()
    theta = theta.clone()
    if strategy == "vmap":
        vstep = vmap(step, in_dims=(0, 0, 0, None), randomness="different")
        for s in range(batches.shape[1]):
            idx = batches[:, s]
            theta = vstep(theta, task.x_train[idx], task.y_train[idx], lr)
        return theta
    for i in range(theta.shape[0]):
        th = theta[i]
        for s in range(batches.shape[1]):
            idx = batches[i, s]
            th = step(th, task.x_train[idx], task.y_train[idx], lr)
        theta[i] = th
    return theta


def sgd(task: Task, theta: Tensor, x: Tensor, y: Tensor, steps: int, lr: float,
        batch_size: int, generator: torch.Generator | None = None,
        ascent: bool = False) -> Tensor:
    """``steps`` minibatch SGD steps (or gradient *ascent* steps) from θ (d,) on any (x, y)."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need matching, non-empty x and y, got {len(x)} and {len(y)}")
    step = _sgd_step_fn(task, ascent=ascent)
    task.model.train()
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = draw_batch(len(x), batch_size, g).to(x.device)
        theta = step(theta, x[idx], y[idx], lr)
    return theta


def gradient(task: Task, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """∇θ F(θ; x, y) as a flat vector (full batch; used for FLTrust's server update)."""
    task.model.train()
    return _flat_grad_fn(task)(theta, x, y)


@torch.no_grad()
def predict_proba(task: Task, theta: Tensor, x: Tensor, batch_size: int = 2048) -> Tensor:
    """Softmax probabilities (N, C) of the model θ on x, in evaluation mode."""
    task.model.eval()
    try:
        out = [torch.softmax(task.forward(theta, x[i:i + batch_size]), dim=-1)
               for i in range(0, len(x), batch_size)]
    finally:
        task.model.train()
    return torch.cat(out) if out else torch.empty(0, task.num_classes, device=x.device)


def evaluate(task: Task, theta: Tensor, x: Tensor, y: Tensor) -> dict[str, object]:
    """Accuracy, loss and per-class accuracy of θ on (x, y)."""
    p = predict_proba(task, theta, x)
    pred = p.argmax(1)
    loss = F.nll_loss(torch.log(p.clamp_min(1e-12)), y).item()
    correct = (pred == y).float()
    per_class = torch.zeros(task.num_classes, device=x.device).index_add_(0, y, correct)
    counts = torch.bincount(y, minlength=task.num_classes).clamp_min(1)
    return {"accuracy": correct.mean().item(), "loss": loss,
            "per_class_accuracy": (per_class / counts).tolist()}


def confidence(task: Task, theta: Tensor, x: Tensor, labels: Tensor) -> float:
    """Mean probability the model θ gives to ``labels`` on x (Romoa Figs. 2 and 6)."""
    p = predict_proba(task, theta, x)
    return p.gather(1, labels.view(-1, 1)).mean().item()
