"""The two federated protocols of the papers, as small objects holding their own parameters.

* :class:`SyncRounds` — synchronous FedAvg-style rounds (L2A Algorithm 1): each round the
  server samples w of K clients, each takes E local SGD steps from θ, uploads Δᵢ = θ − θᵢ, an
  attack replaces the sampled malicious clients' uploads, and θ ← θ − Aggr(Δ).
* :class:`Lookahead` — Romoa's asynchronous protocol with lookahead uploads (Romoa
  Algorithms 1–2): every participant takes one local step per iteration and uploads every
  iteration; the server observes every upload (Romoa updates its sanitizing factors each
  iteration) and aggregates every τ iterations, after which each participant moves toward the
  new global model at the moving rate γ: θᵢ ← θᵢ − γ(θᵢ − θ̄).

A protocol's :meth:`step` advances a :class:`fedlib.federation.Federation` by one round (or
iteration) for all of its replicas at once; the federation supplies local training, the attack
seam and aggregation, so the round loop exists once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor

from .batch_stream import uniform_subsets
from .engine import seed_for

if TYPE_CHECKING:                                    # pragma: no cover
    from .context import AttackContext
    from .federation import Federation, StepResult
    from .runs import RunConfig

Hook = Callable[["AttackContext"], Tensor]


def draw_clients(seeds: list[int], rounds: list[int], num_clients: int, w: int) -> Tensor:
    """(B, w) sorted ids: w of ``num_clients`` clients, uniformly without replacement, for each
    replica (seed, round) in one batched draw (:func:`fedlib.batch_stream.uniform_subsets`)."""
    bases = torch.tensor([seed_for(s, "subsample", t) for s, t in zip(seeds, rounds)])
    return uniform_subsets(bases, num_clients, w)


@functools.lru_cache(maxsize=4096)
def _draw_one(seed: int, t: int, num_clients: int, w: int) -> Tensor:
    """One replica's :func:`draw_clients` (cached: the attackers' simulator asks for the same
    round's sample several times)."""
    return draw_clients([seed], [t], num_clients, w)[0]


@dataclass(frozen=True)
class SyncRounds:
    """L2A Algorithm 1: w of K clients per round, E local steps, θ ← θ − Aggr(θ − θᵢ)."""

    clients_per_round: int
    """w: clients the server samples each round (uniformly, without replacement)."""
    local_steps: int = 1
    """E: local SGD steps per round."""
    shared_noise: float = 0.0
    """Scale of the Laplace noise added to the model shared with clients (L2A App. E.2)."""

    name = "sync"
    provides_server_update = True

    @classmethod
    def from_config(cls, cfg: "RunConfig") -> "SyncRounds":
        """The protocol a validated run config describes."""
        return cls(cfg.clients_per_round or cfg.num_clients, cfg.local_steps, cfg.shared_noise)

    def initial_state(self, theta: Tensor, num_clients: int) -> dict[str, Tensor]:
        """Nothing beyond θ: clients start every round from the shared model."""
        return {}

    def draw(self, seed: int, t: int, num_clients: int) -> Tensor:
        """(w,) sorted client ids the server of a replica seeded ``seed`` samples in round t."""
        return _draw_one(seed, t, num_clients, self.clients_per_round).clone()

    def sample(self, fed: "Federation") -> Tensor:
        """(B, w) the clients each replica's server samples in its next round."""
        return draw_clients(fed.seeds, fed.rounds, fed.num_clients, self.clients_per_round)

    def reset_rows(self, state: dict[str, Tensor], theta: Tensor, rows: Any) -> dict[str, Tensor]:
        """Nothing to reset: clients start every round from the shared model."""
        return state

    def step(self, fed: "Federation", hook: Optional[Hook]) -> "StepResult":
        """One round of Algorithm 1 for every replica (each at its own round)."""
        t, theta = fed.rounds[0], fed.theta
        ids = self.sample(fed)
        shared = theta.clone()
        uploads = torch.zeros(len(fed.seeds), ids.shape[1], theta.shape[1], dtype=theta.dtype,
                              device=theta.device)
        keep = None                 # a hook that never reads honest updates: attackers skip SGD
        if hook is not None and not getattr(hook, "reads_honest_updates", True):
            keep = ~fed.malicious[ids.cpu()]

        def train(b: int) -> None:                   # noise → local SGD, in replica b's stream
            if self.shared_noise > 0:
                noise = torch.distributions.Laplace(0.0, self.shared_noise).sample(theta[b].shape)
                shared[b] = theta[b] + noise.to(theta)
            rows = ids[b] if keep is None else ids[b][keep[b]]
            starts = shared[b].expand(len(rows), -1)
            local = fed.local_train(b, starts, rows, self.local_steps)
            if keep is None:
                uploads[b] = shared[b].unsqueeze(0) - local
            else:
                uploads[b][keep[b].to(uploads.device)] = shared[b].unsqueeze(0) - local

        fed.for_each_replica(train, batched=self._batched_train(fed, shared, ids, uploads, keep))
        mal = fed.poison(uploads, ids, shared, hook, local_steps=self.local_steps)
        uploads = fed.clean_uploads(uploads)
        delta = fed.aggregate(uploads, ids, shared, mal, sync=True)
        new_theta = fed.apply(theta, delta)
        fed.theta = new_theta
        return fed.result(t, True, shared, theta, new_theta, uploads, ids, mal)

    def _batched_train(self, fed: "Federation", shared: Tensor, ids: Tensor, uploads: Tensor,
                       keep: Optional[Tensor]) -> Optional[Callable[[], None]]:
        """Local training of all replicas as one vmapped call (no shared noise), if it applies."""
        if self.shared_noise > 0:
            return None

        def run() -> None:
            B, w = ids.shape
            starts = shared.unsqueeze(1).expand(B, w, -1)
            uploads.copy_(starts - fed.local_train_all(starts, ids, self.local_steps, keep))

        return run

    def state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The protocol state to snapshot (none)."""
        return {}


@dataclass(frozen=True)
class Lookahead:
    """Romoa Algorithms 1–2: one local step and one upload per iteration, a sync every τ."""

    tau: int
    """τ: iterations between two sync points (aggregations)."""
    moving_rate: float = 1.0
    """γ: how far participants move toward θ̄ at a sync, θᵢ ← θᵢ − γ(θᵢ − θ̄) (1 = adopt it)."""

    name = "romoa"
    provides_server_update = False

    @classmethod
    def from_config(cls, cfg: "RunConfig") -> "Lookahead":
        """The protocol a validated run config describes."""
        return cls(cfg.tau, cfg.moving_rate)

    def initial_state(self, theta: Tensor, num_clients: int) -> dict[str, Tensor]:
        """Every participant starts from the initial model: states (B, n, d)."""
        return {"states": theta.unsqueeze(1).expand(-1, num_clients, -1).clone()}

    def draw(self, seed: int, t: int, num_clients: int) -> Tensor:
        """(n,): every participant uploads in every iteration."""
        return torch.arange(num_clients)

    def sample(self, fed: "Federation") -> Tensor:
        """(B, n): every participant uploads every iteration."""
        return torch.arange(fed.num_clients).expand(len(fed.seeds), -1).clone()

    def reset_rows(self, state: dict[str, Tensor], theta: Tensor, rows: Any) -> dict[str, Tensor]:
        """Replicas ``rows`` restart with every participant at their θ₀ (``theta``'s rows)."""
        states = state["states"].clone()
        for b in rows:
            states[b] = theta[b]
        return {"states": states}

    def step(self, fed: "Federation", hook: Optional[Hook]) -> "StepResult":
        """One iteration of Algorithm 2 for every replica."""
        t, synced = fed.round, fed.theta                        # one clock: syncs every τ
        ids = self.sample(fed)
        states = fed.protocol_state["states"]
        new_states = torch.empty_like(states)

        def train(b: int) -> None:                    # Alg. 2 line 7
            new_states[b] = fed.local_train(b, states[b], ids[b], 1)

        def train_all() -> None:
            new_states.copy_(fed.local_train_all(states, ids, 1))

        fed.for_each_replica(train, batched=train_all)
        uploads = synced.unsqueeze(1) - new_states                              # line 8 (upload)
        mal = fed.poison(uploads, ids, synced, hook, local_steps=1)
        uploads = fed.clean_uploads(uploads)
        sync = (t + 1) % self.tau == 0
        new_synced = synced
        if sync:                                                                # lines 20–21
            new_synced = fed.apply(synced, fed.aggregate(uploads, ids, synced, mal, sync=True))
            new_states = torch.lerp(new_states, new_synced.unsqueeze(1).expand_as(new_states),
                                    self.moving_rate)                          # line 11
        else:                                                                   # lines 16–19
            fed.observe(uploads, ids, synced, mal)
        fed.protocol_state["states"] = new_states
        fed.theta = new_synced
        return fed.result(t, sync, synced, synced, new_synced, uploads, ids, mal)


def protocol_for(cfg: "RunConfig") -> Any:
    """The protocol object of a validated run config."""
    return SyncRounds.from_config(cfg) if cfg.protocol == "sync" else Lookahead.from_config(cfg)
