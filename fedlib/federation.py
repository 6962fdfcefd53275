"""One steppable, replica-batched round loop under every run: :class:`Federation`.

A federation holds the global model θ, the round counter, the protocol's state (Romoa's
participant states), the aggregator's state (Romoa's sanitizing factors, centered clipping's
momentum) and the attack. :meth:`Federation.step` advances one round of the synchronous protocol
(L2A Algorithm 1) or one iteration of Romoa's lookahead protocol (Romoa Algorithms 1–2; see
:mod:`fedlib.protocols`); :meth:`Federation.run` steps with observers (evaluation, recording,
progress); :meth:`Federation.snapshot` / :meth:`Federation.restore` fork and resume a run
bit-identically.

**Replicas.** ``Federation(task, cfg, seeds=[s₀, …, s_{B−1}])`` runs B independent federations —
the same model and setting, each with its own seed (partition, initial model, client sampling,
minibatches, attack stream) — as one batched computation: θ is (B, d), the uploads (B, n, d);
local training is one ``vmap`` over replicas × clients and aggregation one call of a batched rule
(rules with ``batched = True``; others, e.g. Romoa, get one instance per replica). B = 1 is the
plain single run.

**Separate clocks.** With ``separate_clocks=True`` each replica keeps its own round counter
(``fed.rounds``): :meth:`Federation.step` may advance a subset of replicas (``rows=``) and
:meth:`Federation.reset_replicas` restarts some replicas from θ₀ with new seeds, the others
untouched. The attackers' simulator of L2A (:mod:`fedlib.rl.sim`) runs its episodes this way; a
stateful rule (centered clipping's momentum) then gets one instance per replica. Romoa's lookahead
protocol syncs every τ iterations of a shared clock and steps all replicas together.

**Non-finite values.** ``nonfinite="abort"`` (runs): a non-finite aggregate aborts the run.
``nonfinite="skip"`` (a simulated server that must survive any attack): a non-finite upload counts
as a zero update and an aggregate that would make θ non-finite is not applied.

**Randomness.** Every random draw comes from a stream derived from (seed, purpose, round[, client])
by :func:`fedlib.engine.seed_for`, so the state of a federation is fully described by its round
counter and tensors: no generator state needs saving. Dropout draws inside local training come
from torch's global generator, seeded per replica and round inside ``torch.random.fork_rng``:
stepping a federation leaves the caller's global generators exactly as they were.

**The attack seam.** ``step(malicious=hook)`` lets ``hook(ctx: AttackContext) -> (m, d)`` craft
the uploads of the m malicious clients sampled in a replica this round; ``ctx`` holds exactly what
the threat model grants (see :class:`fedlib.context.AttackContext`). Without a hook the
configured attack (``cfg.attack``, from round ``cfg.attack_start`` on) is used. Every attack
object is such a hook, and so is the RL policy (:mod:`fedlib.rl`). What the loop relies on is
written down as Protocols in :mod:`fedlib.interfaces` (``AggregationRule``, ``AttackHook``).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from . import engine
from .config import RunConfig
from .context import AttackContext
from .engine import Task
from .flat import flatten_module
from .protocols import Hook, protocol_for
from .round_pieces import RoundPieces, StepResult
from .tasks import build_attack, build_task, load_data, server_update_fn

Observer = Callable[["Federation", "StepResult"], None]
NONFINITE = ("abort", "skip")


def _stateful(agg: Any) -> bool:
    """Whether a rule keeps state across calls (it overrides ``reset``, e.g. centered clipping)."""
    from .aggregators.registry import Aggregator
    reset = getattr(type(agg), "reset", None)
    return reset is not None and reset is not Aggregator.reset


class _Gated:
    """An attack that leaves rounds before ``start`` honest (``RunConfig.attack_start``)."""

    def __init__(self, attack: Any, start: int):
        self.attack, self.start = attack, start
        self.name = getattr(attack, "name", type(attack).__name__)

    def __call__(self, ctx: AttackContext) -> Tensor:
        return self.attack(ctx) if ctx.round >= self.start else ctx.honest_updates

    def __getattr__(self, item: str) -> Any:
        if item == "attack":                          # not yet set (e.g. while being copied)
            raise AttributeError(item)
        return getattr(self.attack, item)


class Federation(RoundPieces):
    """B replicas of one federated setting (a validated :class:`fedlib.runs.RunConfig`)."""

    def __init__(self, task: Task | Sequence[Task], cfg: Any, seeds: Optional[Sequence[int]] = None,
                 *, theta0: Optional[Tensor] = None, aggregator: Any = None, attack: Any = None,
                 server_update: Optional[Callable[[Tensor], Tensor]] = None,
                 separate_clocks: bool = False, nonfinite: str = "abort"):
        from . import aggregators
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        self.cfg = cfg = RunConfig.from_dict(cfg)
        self.seeds = [int(s) for s in (seeds if seeds is not None else [cfg.seed])]
        B = len(self.seeds)
        if B < 1:
            raise ValueError("a federation needs at least one replica (seeds must not be empty)")
        self.tasks = list(task) if isinstance(task, (list, tuple)) else [task] * B
        if len(self.tasks) != B:
            raise ValueError(f"got {len(self.tasks)} tasks for {B} seeds")
        self.task = self.tasks[0]
        self.num_clients = len(self.task.clients)
        if any(len(t.clients) != self.num_clients for t in self.tasks):
            raise ValueError("every replica's task must have the same number of clients")
        if self.num_clients != cfg.num_clients:
            raise ValueError(f"the task has {self.num_clients} clients, cfg.num_clients is "
                             f"{cfg.num_clients}")
        self.protocol = protocol_for(cfg)
        self.device = self.task.device
        if theta0 is None:
            theta = torch.stack([flatten_module(t.model) for t in self.tasks])
        else:
            theta = torch.as_tensor(theta0).to(self.device)
            theta = theta.expand(B, -1).clone() if theta.dim() == 1 else theta.clone()
        if theta.shape != (B, self.task.spec.dim):
            raise ValueError(f"theta0 must be (d,) or (B, d) = ({B}, {self.task.spec.dim}), "
                             f"got {tuple(theta.shape)}")
        self.theta = theta.detach()
        self.theta0 = self.theta.clone()
        self.rounds = [0] * B
        self.separate_clocks, self.nonfinite = bool(separate_clocks), nonfinite
        self.malicious = torch.zeros(self.num_clients, dtype=torch.bool)
        self.malicious[: cfg.num_attackers] = True
        self._attacker_cache: dict[int, tuple[Tensor, Tensor]] = {}
        agg = aggregator if aggregator is not None else \
            aggregators.get(cfg.aggregator, **cfg.aggregator_params)
        self.batched_aggregator = B == 1 or bool(getattr(agg, "batched", False))
        if separate_clocks and _stateful(agg):
            self.batched_aggregator = False              # each replica's state on its own clock
        self._pristine_aggregator = copy.deepcopy(agg)
        self.aggregators = [agg] if self.batched_aggregator else \
            [agg] + [copy.deepcopy(agg) for _ in range(B - 1)]
        needs = getattr(agg, "needs_server_update", False)
        if needs and not self.protocol.provides_server_update:
            raise ValueError(f"aggregator {cfg.aggregator!r} needs a server update, which protocol "
                             f"{cfg.protocol!r} does not provide")
        if server_update is not None:
            self.server_updates = [lambda th, _f=server_update: _f(th.unsqueeze(0))[0]] * B
            self._batched_server_update = server_update
        else:
            self.server_updates = [server_update_fn(cfg, t, s)
                                   for t, s in zip(self.tasks, self.seeds)] if needs else None
            self._batched_server_update = None
        if attack is not None:
            self.attacks = [attack] + [copy.deepcopy(attack) for _ in range(B - 1)]
        else:
            built = [build_attack(cfg, t) for t in self.tasks]
            self.attacks = [None if a is None else _Gated(a, cfg.attack_start) for a in built]
        self.strategy = engine.resolve_strategy(self._replica_strategy(cfg.strategy), self.device)
        self.protocol_state = self.protocol.initial_state(self.theta, self.num_clients)
        self._pool: Optional[tuple[Task, list[int]]] = None

    def _replica_strategy(self, strategy: str) -> str:
        """"auto" for B > 1 replicas: one vmap over replicas × clients on CUDA, and on a CPU for
        tiny models (< 10k parameters), where per-call overhead dominates; a loop otherwise
        (on a CPU a vmapped CNN is slower than one client after another)."""
        if strategy != "auto" or len(self.seeds) == 1:
            return strategy
        small = self.task.spec.dim < 10_000
        return "vmap" if self.device.type == "cuda" or small else "sequential"

    @classmethod
    def from_config(cls, cfg: Any, seeds: Optional[Sequence[int]] = None,
                    **options: Any) -> "Federation":
        """Build the data, partitions and initial models of ``cfg`` per seed (default cfg.seed);
        ``options`` are the constructor's keyword options (``separate_clocks``, ``nonfinite``…)."""
        import dataclasses

        base = RunConfig.from_dict(cfg)
        seeds = list(seeds) if seeds is not None else [base.seed]
        loaded = load_data(base)
        tasks = [build_task(dataclasses.replace(base, seed=s), loaded) for s in seeds]
        return cls(tasks, base, seeds, **options)

    # ------------------------------------------------------------------ clocks
    @property
    def round(self) -> int:
        """t: the rounds (iterations) completed, the same in every replica (else see ``rounds``)."""
        t = self.rounds[0]
        if any(r != t for r in self.rounds):
            raise RuntimeError(f"the replicas' clocks differ ({self.rounds}); read fed.rounds")
        return t

    @round.setter
    def round(self, t: int) -> None:
        self.rounds = [int(t)] * len(self.seeds)

    # ------------------------------------------------------------------ stepping
    def next_clients(self) -> Tensor:
        """(B, w) the clients the server samples in each replica's next round (deterministic)."""
        return self.protocol.sample(self)

    def step(self, malicious: Optional[Hook] = None,
             rows: Optional[Sequence[int]] = None) -> StepResult:
        """Advance every replica (or, with separate clocks, the replicas ``rows``) by one round
        (sync) or one iteration (Romoa's protocol); the result holds the stepped rows only."""
        if rows is not None and list(rows) != list(range(len(self.seeds))):
            if not self.separate_clocks:
                raise ValueError("stepping a subset of replicas needs separate_clocks=True")
            with self._only(list(rows)):
                return self.step(malicious)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(engine.seed_for(self.seeds[0], "round", self.rounds[0]))
            result = self.protocol.step(self, malicious)
        self.rounds = [r + 1 for r in self.rounds]
        return result

    def reset_replicas(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """Restart replicas ``rows`` from θ₀ at round 0 with new ``seeds`` (separate clocks)."""
        if not self.separate_clocks:
            raise ValueError("resetting replicas needs separate_clocks=True")
        for b, s in zip(rows, seeds, strict=True):
            self.seeds[b], self.rounds[b] = int(s), 0
            self.theta[b] = self.theta0[b]
            if not self.batched_aggregator:
                self.aggregators[b] = copy.deepcopy(self._pristine_aggregator)
        self.protocol_state = self.protocol.reset_rows(self.protocol_state, self.theta, rows)

    @contextlib.contextmanager
    def _only(self, rows: list[int]) -> Iterator[None]:
        """Narrow the federation to replicas ``rows`` and write their new state back after."""
        names = ("seeds", "tasks", "rounds", "attacks", "server_updates",
                 "theta", "protocol_state", "_pool")
        full = {k: getattr(self, k) for k in names}
        full_aggs = self.aggregators
        pick = torch.tensor(rows, device=self.theta.device)
        for k in ("seeds", "tasks", "rounds", "attacks"):
            setattr(self, k, [full[k][b] for b in rows])
        if full["server_updates"] is not None:
            self.server_updates = [full["server_updates"][b] for b in rows]
        if not self.batched_aggregator:
            self.aggregators = [full_aggs[b] for b in rows]
        self.theta = full["theta"][pick]
        self.protocol_state = {k: v[pick] for k, v in full["protocol_state"].items()}
        self._pool = None
        try:
            yield
            full["theta"][pick] = self.theta
            for b, r in zip(rows, self.rounds):
                full["rounds"][b] = r
            for k, v in self.protocol_state.items():
                full["protocol_state"][k][pick] = v
        finally:
            for k, v in full.items():
                setattr(self, k, v)
            self.aggregators = full_aggs
            if self.batched_aggregator and hasattr(full_aggs[0], "weights"):
                full_aggs[0].weights = None       # a subset's weights do not describe the batch

    def run(self, rounds: int, observers: Sequence[Observer] = (), progress: bool = True) -> Tensor:
        """Step ``rounds`` times, calling every observer after each step; returns θ (B, d)."""
        from tqdm import tqdm
        desc = "rounds" if self.protocol.name == "sync" else "iterations"
        for _ in tqdm(range(rounds), desc=desc, disable=not progress, mininterval=2.0):
            result = self.step()
            for observe in observers:
                observe(self, result)
        return self.theta

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        """The full state (θ, counter, protocol, aggregator and attack state), a detached copy."""
        memo = self._shared_memo()
        return copy.deepcopy({"rounds": list(self.rounds), "seeds": list(self.seeds),
                              "theta": self.theta,
                              "protocol_state": self.protocol_state,
                              "aggregators": self.aggregators, "attacks": self.attacks}, memo)

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`; stepping on is bit-identical to the run it was taken from."""
        snap = copy.deepcopy(snap, self._shared_memo())
        if snap["theta"].shape != self.theta.shape:
            raise ValueError(f"snapshot θ has shape {tuple(snap['theta'].shape)}, this federation "
                             f"{tuple(self.theta.shape)}")
        self.rounds = [int(r) for r in snap["rounds"]]
        self.seeds = [int(s) for s in snap.get("seeds", self.seeds)]
        self.theta = snap["theta"]
        self.protocol_state = snap["protocol_state"]
        self.aggregators, self.attacks = snap["aggregators"], snap["attacks"]

    def _shared_memo(self) -> dict[int, Any]:
        """Objects a snapshot shares instead of copying: the tasks and their data."""
        memo: dict[int, Any] = {}
        for t in self.tasks:
            for obj in (t, t.model, t.x_train, t.y_train, t.x_test, t.y_test, *t.clients):
                memo[id(obj)] = obj
        for x, y in self._attacker_cache.values():
            memo[id(x)], memo[id(y)] = x, y
        return memo

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, chunk: int = 2048) -> dict[str, Tensor]:
        """Accuracy and mean cross-entropy of every replica's θ on (x, y): (B,) tensors."""
        task = self.task
        task.model.eval()
        try:
            fwd = vmap(lambda th, xb: functional_call(task.model, task.spec.unflatten(th), (xb,)),
                       in_dims=(0, None))
            correct = torch.zeros(len(self.seeds), device=x.device)
            loss = torch.zeros(len(self.seeds), device=x.device)
            for i in range(0, len(x), chunk):
                logits = fwd(self.theta, x[i:i + chunk])                         # (B, N, C)
                yb = y[i:i + chunk]
                correct += (logits.argmax(-1) == yb).sum(1)
                loss += torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2), yb.expand(len(self.seeds), -1), reduction="none").sum(1)
        finally:
            task.model.train()
        n = max(len(x), 1)
        return {"accuracy": correct / n, "loss": loss / n}

    def weights(self, b: int) -> Optional[Tensor]:
        """Replica ``b``'s per-upload weights of the last aggregation, if the rule has any."""
        agg = self.aggregators[0] if self.batched_aggregator else self.aggregators[b]
        w = getattr(agg, "weights", None)
        if w is None:
            return None
        w = torch.as_tensor(w)
        return w[b] if w.dim() == 2 else w
