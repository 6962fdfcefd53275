"""The pieces of a round that protocols call on a :class:`fedlib.federation.Federation`.

A protocol (:mod:`fedlib.protocols`) writes the order of a round; these methods do the work, for
every replica of the federation at once: local training (one ``vmap`` over replicas × clients, or
one replica after another in its own dropout stream), the attack seam (each replica's hook or
configured attack crafts its malicious rows from an :class:`fedlib.context.AttackContext`),
aggregation (one batched call of the rule, or one per replica), the non-finite policy and the
packaging of a step as a :class:`StepResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import engine
from .context import AttackContext, RoundContext, RoundEvent
from .engine import Task
from .protocols import Hook


@dataclass
class StepResult:
    """What one :meth:`Federation.step` did, for every replica (leading dimension B)."""

    round: int
    """t, from 0: the round (sync) or iteration (Romoa's protocol) just completed."""
    sync: bool
    """Whether the aggregate was applied (always True in the synchronous protocol)."""
    theta_shared: Tensor
    """(B, d): the model the clients received (θ_ref plus any shared-model noise)."""
    theta_before: Tensor
    """(B, d): the server's model before this step."""
    theta_after: Tensor
    """(B, d): the server's model after this step."""
    uploads: Tensor
    """(B, n, d): the deltas the aggregator saw (malicious rows already crafted)."""
    client_ids: Tensor
    """(B, n): which clients uploaded."""
    is_malicious: Tensor
    """(B, n) bool: which rows were crafted (ground truth, for plots and tests)."""

    def event(self, b: int, lr: float, aggregator: Any) -> RoundEvent:
        """Replica ``b``'s step as the :class:`RoundEvent` run callbacks receive."""
        return RoundEvent(round=self.round, theta_shared=self.theta_shared[b],
                          theta_before=self.theta_before[b], theta_after=self.theta_after[b],
                          uploads=self.uploads[b], client_ids=self.client_ids[b],
                          malicious=self.is_malicious[b], sync=self.sync, lr=lr,
                          aggregator=aggregator)


def _check_finite(vec: Tensor, what: str, t: int) -> None:
    if not torch.isfinite(vec).all():
        raise FloatingPointError(f"round {t}: {what} contains NaN/Inf; the run is aborted and "
                                 "nothing is cached (lower the learning rate or check the attack)")


class RoundPieces:
    """Local training, the attack seam and aggregation of a federation's replicas (mixin)."""

    def for_each_replica(self, fn: Callable[[int], None],
                         batched: Optional[Callable[[], None]] = None) -> None:
        """Run ``fn(b)`` for every replica in its own dropout stream, or ``batched()`` once."""
        if batched is not None and len(self.seeds) > 1 and self.strategy == "vmap":
            batched()
            return
        for b, s in enumerate(self.seeds):
            torch.manual_seed(engine.seed_for(s, "round", self.rounds[b]))
            fn(b)

    def local_train(self, b: int, starts: Tensor, ids: Tensor, steps: int) -> Tensor:
        """Replica ``b``'s clients ``ids`` take ``steps`` SGD steps from ``starts`` (n, d)."""
        task = self.tasks[b]
        batches = engine.sample_batches(task, ids, self.rounds[b], steps, self.cfg.batch_size,
                                        self.seeds[b])
        strategy = self.cfg.strategy if len(self.seeds) == 1 else self.strategy
        return engine.local_sgd(task, starts, batches, self.cfg.lr, strategy)

    def local_train_all(self, starts: Tensor, ids: Tensor, steps: int,
                        keep: Optional[Tensor] = None) -> Tensor:
        """Every replica's clients at once: starts (B, n, d), ids (B, n) → (B, n, d), one vmap;
        with ``keep`` (B, n) bool only those clients train (the others return their start)."""
        B, n, d = starts.shape
        keep = torch.ones(B, n, dtype=torch.bool) if keep is None else keep.cpu()
        pool = self._pooled()[0]
        batches = self.pooled_batches(ids, steps, keep)
        if bool(keep.all()):
            out = engine.local_sgd(pool, starts.reshape(B * n, d), batches, self.cfg.lr, "vmap")
            return out.reshape(B, n, d)
        out = starts.clone()
        dev = keep.to(starts.device)
        out[dev] = engine.local_sgd(pool, starts[dev], batches, self.cfg.lr, "vmap")
        return out

    def pooled_batches(self, ids: Tensor, steps: int, keep: Tensor) -> Tensor:
        """(k, steps, batch) indices into the pooled training set: the minibatches of every
        replica's clients ``ids`` (B, n) where ``keep`` (B, n), each as its replica draws them."""
        pool, offsets, first_rows = self._pooled()
        ids = ids.cpu()
        if pool.iid_pool:  # one stream per replica and round (engine.sample_batches)
            return torch.cat([
                engine.sample_batches(task, ids[b][keep[b]], t, steps, self.cfg.batch_size, s)
                + offsets[b]
                for b, (task, s, t) in enumerate(zip(self.tasks, self.seeds, self.rounds))])
        bases = torch.tensor([engine.batch_base(s, t) for s, t in zip(self.seeds, self.rounds)])
        rows = ids + torch.tensor(first_rows).unsqueeze(1)
        return pool.client_table.batches(rows[keep], ids[keep],
                                         bases.unsqueeze(1).expand_as(ids)[keep], steps,
                                         self.cfg.batch_size).to(pool.device)

    def _pooled(self) -> tuple[Task, list[int], list[int]]:
        """One task holding every replica's training set and clients (each distinct one once),
        each replica's offset into its training set and the row of its first client."""
        if self._pool is None:
            import dataclasses
            xs, ys, offsets, seen = [], [], [], {}
            total = 0
            for t in self.tasks:
                if id(t.x_train) not in seen:
                    seen[id(t.x_train)] = total
                    xs.append(t.x_train)
                    ys.append(t.y_train)
                    total += len(t.x_train)
                offsets.append(seen[id(t.x_train)])
            clients, first_rows, rows_of = [], [], {}
            for t, off in zip(self.tasks, offsets):
                if id(t) not in rows_of:
                    rows_of[id(t)] = len(clients)
                    clients += [c + off if off else c for c in t.clients]
                first_rows.append(rows_of[id(t)])
            pool = dataclasses.replace(self.task, x_train=torch.cat(xs) if len(xs) > 1 else xs[0],
                                       y_train=torch.cat(ys) if len(ys) > 1 else ys[0],
                                       clients=clients)
            self._pool = (pool, offsets, first_rows)
        return self._pool

    @property
    def attacker_data(self) -> list[tuple[Tensor, Tensor]]:
        """Each replica's (x, y): the union of the malicious clients' local data."""
        return [self._attacker_data_of(t) for t in self.tasks]

    def _attacker_data_of(self, task: Task) -> tuple[Tensor, Tensor]:
        """The attackers' data of ``task``, built on first use and shared by its replicas."""
        if id(task) not in self._attacker_cache:
            self._attacker_cache[id(task)] = self._attacker_data(task)
        return self._attacker_cache[id(task)]

    def _attacker_data(self, task: Task) -> tuple[Tensor, Tensor]:
        M = self.cfg.num_attackers
        idx = torch.cat([task.clients[i] for i in range(M)]) if M else \
            torch.zeros(0, dtype=torch.long, device=task.device)
        return task.x_train[idx], task.y_train[idx]

    def poison(self, uploads: Tensor, ids: Tensor, shared: Tensor, hook: Optional[Hook], *,
               local_steps: int) -> Tensor:
        """The hook (or the configured attack) crafts the malicious rows in place; (B, n) mask."""
        mal = self.malicious[ids.cpu()].to(uploads.device)
        for b, s in enumerate(self.seeds):
            t = self.rounds[b]
            attack = hook if hook is not None else self.attacks[b]
            if attack is None or not bool(mal[b].any()):
                continue
            g = torch.Generator().manual_seed(engine.seed_for(s, "attack", t))
            task = self.tasks[b]
            ctx = AttackContext(
                round=t, theta=shared[b], spec=task.spec, lr=self.cfg.lr,
                batch_size=self.cfg.batch_size, local_steps=local_steps,
                honest_updates=uploads[b][mal[b]], benign_updates=uploads[b][~mal[b]],
                num_clients=uploads.shape[1], aggregator=self._rule_for_attack(b),
                data=self._attacker_data_of(task),
                train=lambda th, x, y, steps, lr_, bs, ascent=False, _t=task, _g=g: engine.sgd(
                    _t, th, x, y, steps, lr_, bs, generator=_g, ascent=ascent),
                forward=task.forward, generator=g, population=self.num_clients,
                num_attackers_total=self.cfg.num_attackers, replica=b)
            crafted = attack(ctx)
            expected = (ctx.num_malicious, shared.shape[1])
            if tuple(crafted.shape) != expected:
                raise ValueError(f"attack {getattr(attack, 'name', attack)!r} returned shape "
                                 f"{tuple(crafted.shape)}, expected {expected}")
            uploads[b][mal[b]] = crafted.to(uploads.dtype)
        return mal

    def _aggregator_of(self, b: int) -> Any:
        return self.aggregators[0] if self.batched_aggregator else self.aggregators[b]

    def _rule_for_attack(self, b: int) -> Any:
        """Replica ``b``'s rule for a white-box attack to probe: (n, d) calls, no state change."""
        agg = self._aggregator_of(b)
        if len(self.seeds) > 1 and self.batched_aggregator and hasattr(agg, "replica"):
            return agg.replica(b)
        return agg

    def _context(self, b: Optional[int], ids: Tensor, theta_ref: Tensor, mal: Tensor,
                 sync: bool) -> RoundContext:
        """The RoundContext of replica ``b``, or of the whole batch (b = None)."""
        fns = self.server_updates
        if b is None:
            one = self._batched_server_update
            server = None if not fns else (lambda: one(theta_ref)) if one is not None else \
                (lambda: torch.stack([f(theta_ref[i]) for i, f in enumerate(fns)]))
            return RoundContext(round=self.rounds[0], theta=theta_ref, spec=self.task.spec,
                                lr=self.cfg.lr, sync=sync, client_ids=ids,
                                server_update=server, num_malicious=mal.sum(1))
        server = (lambda: fns[b](theta_ref[b])) if fns else None
        return RoundContext(round=self.rounds[b], theta=theta_ref[b], spec=self.task.spec,
                            lr=self.cfg.lr, sync=sync, client_ids=ids[b], server_update=server,
                            num_malicious=int(mal[b].sum()))

    def aggregate(self, uploads: Tensor, ids: Tensor, theta_ref: Tensor, mal: Tensor, *,
                  sync: bool) -> Tensor:
        """Aggr(Δ) for every replica: (B, d); a non-finite aggregate aborts the run."""
        B = len(self.seeds)
        if B == 1:
            out = self.aggregators[0](uploads[0], self._context(0, ids, theta_ref, mal, sync))
            out = out.unsqueeze(0)
        elif self.batched_aggregator:
            out = self.aggregators[0](uploads, self._context(None, ids, theta_ref, mal, sync))
        else:
            out = torch.stack([agg(uploads[b], self._context(b, ids, theta_ref, mal, sync))
                               for b, agg in enumerate(self.aggregators)])
        name = getattr(self.aggregators[0], "name", "aggregator")
        if self.nonfinite == "abort":
            _check_finite(out, f"the {name} aggregate", self.rounds[0])
        return out

    def clean_uploads(self, uploads: Tensor) -> Tensor:
        """``nonfinite="skip"``: a non-finite upload counts as a zero update (else unchanged)."""
        if self.nonfinite == "skip" and not bool(torch.isfinite(uploads).all()):
            return torch.nan_to_num(uploads, nan=0.0, posinf=0.0, neginf=0.0)
        return uploads

    def apply(self, theta: Tensor, delta: Tensor) -> Tensor:
        """θ − Aggr(Δ); with ``nonfinite="skip"`` a replica keeps θ when that is not finite."""
        new = theta - delta
        if self.nonfinite == "skip":
            new = torch.where(torch.isfinite(new).all(dim=1, keepdim=True), new, theta)
        return new

    def observe(self, uploads: Tensor, ids: Tensor, theta_ref: Tensor, mal: Tensor) -> None:
        """Show a lookahead iteration's uploads to stateful rules (Romoa Alg. 2 lines 16–19)."""
        if len(self.seeds) > 1 and self.batched_aggregator:
            calls = [(self.aggregators[0], uploads, None)]
        else:
            calls = [(self._aggregator_of(b), uploads[b], b) for b in range(len(self.seeds))]
        for agg, x, b in calls:
            if callable(getattr(agg, "observe", None)):
                agg.observe(x, self._context(b, ids, theta_ref, mal, sync=False))

    def result(self, t: int, sync: bool, shared: Tensor, before: Tensor, after: Tensor,
               uploads: Tensor, ids: Tensor, mal: Tensor) -> StepResult:
        """Package a step (protocols call this last)."""
        return StepResult(round=t, sync=sync, theta_shared=shared, theta_before=before,
                          theta_after=after, uploads=uploads, client_ids=ids, is_malicious=mal)
