"""Observers of a :class:`fedlib.federation.Federation`: evaluation and recording of one replica.

A :class:`Recorder` is called after every step (``fed.run(rounds, observers=[recorder])``); it
evaluates the replica's global model every ``eval_every`` rounds (and after the last), stores the
aggregator's per-client weights at every applied aggregation, and keeps a JSON-ready history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from . import engine
from .engine import Task

if TYPE_CHECKING:                                    # pragma: no cover
    from .federation import Federation, StepResult


class Recorder:
    """Collects the metrics of evaluated rounds of replica ``replica`` into plain lists."""

    def __init__(self, task: Task, eval_x: Tensor, eval_y: Tensor, train_x: Optional[Tensor],
                 train_y: Optional[Tensor], targets: Optional[tuple[Tensor, Tensor, Tensor]],
                 num_clients: int, record_weights: bool, *, rounds: int, eval_every: int,
                 replica: int = 0):
        self.task, self.eval_x, self.eval_y = task, eval_x, eval_y
        self.train_x, self.train_y, self.targets = train_x, train_y, targets
        self.num_clients, self.record_weights = num_clients, record_weights
        self.rounds, self.eval_every, self.replica = rounds, eval_every, replica
        self.history: dict[str, list[Any]] = {"round": [], "test_accuracy": [], "test_loss": [],
                                              "per_class_accuracy": []}
        if train_x is not None:
            self.history["train_accuracy"] = []
        if targets is not None:
            for k in ("target_true_confidence", "target_poison_confidence", "target_error",
                      "target_attack_success"):
                self.history[k] = []
        if record_weights:
            self.history["weights"] = []
            self.history["weights_round"] = []

    def start(self, fed: "Federation") -> None:
        """Evaluate the initial model (round 0)."""
        self.evaluate(fed.round, fed.theta[self.replica], fed._aggregator_of(self.replica))

    def __call__(self, fed: "Federation", result: "StepResult") -> None:
        """After a step: weights at an applied aggregation, metrics at the evaluation cadence."""
        b, t = self.replica, result.round
        if result.sync:
            self.weights(t + 1, fed.weights(b), result.client_ids[b])
        if (t + 1) % self.eval_every == 0 or t + 1 == self.rounds:
            self.evaluate(t + 1, fed.theta[b], fed._aggregator_of(b))

    def weights(self, t: int, w: Optional[Tensor], client_ids: Tensor) -> None:
        """Store the aggregator's per-client weights of round t as a dense (K,) list."""
        if not self.record_weights or w is None:
            return
        dense = torch.zeros(self.num_clients)
        dense[client_ids.cpu()] = torch.as_tensor(w, dtype=torch.float32).detach().cpu()
        self.history["weights"].append([round(v, 6) for v in dense.tolist()])
        self.history["weights_round"].append(t)

    def evaluate(self, t: int, theta: Tensor, aggregator: Any) -> None:
        """Evaluate θ after ``t`` completed rounds and append every metric."""
        h, task = self.history, self.task
        m = engine.evaluate(task, theta, self.eval_x, self.eval_y)
        h["round"].append(t)
        h["test_accuracy"].append(m["accuracy"])
        h["test_loss"].append(m["loss"])
        h["per_class_accuracy"].append(m["per_class_accuracy"])
        if self.train_x is not None:
            train = engine.evaluate(task, theta, self.train_x, self.train_y)
            h["train_accuracy"].append(train["accuracy"])
        if self.targets is not None:
            x, y_true, y_poison = self.targets
            p = engine.predict_proba(task, theta, x)
            h["target_true_confidence"].append(p.gather(1, y_true.view(-1, 1)).mean().item())
            h["target_poison_confidence"].append(p.gather(1, y_poison.view(-1, 1)).mean().item())
            h["target_error"].append((p.argmax(1) != y_true).float().mean().item())
            h["target_attack_success"].append((p.argmax(1) == y_poison).float().mean().item())
        report = getattr(aggregator, "report", None)
        if callable(report):
            h.setdefault("aggregator_report", []).append(report())
