"""What the engine hands to an aggregator (a defense) and to an attack each round.

Both protocols express every upload as a *delta* relative to the reference model the
server last published: Δᵢ = θ_ref − θᵢ (L2A Algorithm 1; for Romoa's asynchronous
protocol θ_ref is the last synced global model, so Δᵢ is participant i's path since the last
sync point, the quantity Romoa's lookahead similarity measures). The server then sets
θ_new = θ_ref − Aggr(Δ). For translation-equivariant rules (mean, Krum, median, RFA, Romoa)
aggregating deltas is the same as aggregating models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .flat import ParamSpec


@dataclass
class RoundContext:
    """Side information an aggregator may use; it never reveals who is malicious."""

    round: int
    """t: the round (synchronous protocol) or iteration (Romoa's protocol), from 0."""
    theta: Tensor
    """θ_ref (d,), or (B, d) for a replica batch: the model the deltas are relative to."""
    spec: ParamSpec
    """Parameter names/shapes, for layer-wise rules (Romoa Eqs. 6–7)."""
    lr: float
    """η, the clients' learning rate."""
    sync: bool = True
    """False on Romoa's lookahead iterations between sync points: the result is not applied."""
    client_ids: Optional[Tensor] = None
    """(n,) — (B, n) for a replica batch — ids of the clients whose uploads are the rows."""
    server_update: Optional[Callable[[], Tensor]] = None
    """Δ₀ = η·∇F(θ_ref; root set): FLTrust's server update on demand ((B, d) for batches)."""
    num_malicious: Optional[Any] = None
    """How many of this round's uploads are crafted: an int, or a (B,) LongTensor for replica
    batches. Only the attackers' own simulator of the server reads it (count-dependent rules
    built with ``f="per_call"``); a real server never knows it."""


@dataclass
class AttackContext:
    """Everything an attack may know this round; each attack's docstring says what it uses.

    ``benign_updates`` is the full-knowledge channel (Fang et al.'s full knowledge, IPM,
    Min-Max): partial-knowledge attacks must use only ``honest_updates`` (the updates the
    attackers themselves would have sent) and their own ``data``.
    """

    round: int
    theta: Tensor
    """θ_ref (d,): the model the deltas are relative to."""
    spec: ParamSpec
    lr: float
    batch_size: int
    local_steps: int
    honest_updates: Tensor
    """(m, d): what the m attackers sampled this round would upload if they were honest."""
    benign_updates: Tensor
    """(n − m, d): the benign clients' uploads of this round (full knowledge only)."""
    num_clients: int
    """n: how many uploads the aggregator will see this round (benign + malicious)."""
    aggregator: Any
    """The server's aggregation rule (white-box attacks call it to test candidates)."""
    data: tuple[Tensor, Tensor]
    """(x, y): the attackers' pooled local training data."""
    train: Callable[..., Tensor]
    """train(theta, x, y, steps, lr, batch_size, ascent=False) -> θ': local SGD on any data."""
    forward: Callable[[Tensor, Tensor], Tensor]
    """forward(theta, x) -> logits with the task's model."""
    generator: torch.Generator = field(default_factory=torch.Generator)
    """The attack's own random stream (seeded per run and round)."""
    population: Optional[int] = None
    """K: every client of the federation (sampled or not); None in hand-built contexts."""
    num_attackers_total: Optional[int] = None
    """M: every malicious client of the federation (sampled or not); None in hand-built contexts."""
    replica: int = 0
    """Which replica of a replica-batched federation this round belongs to (0 for a single one)."""

    @property
    def num_malicious(self) -> int:
        """m: the number of uploads this attack must produce."""
        return int(self.honest_updates.shape[0])


@dataclass
class RoundEvent:
    """What a callback passed to ``fedlib.runs.run(config, callbacks=[...])`` sees after a round."""

    round: int
    """t, from 0."""
    theta_shared: Tensor
    """(d,) the model the clients received this round (θ_ref plus any shared-model noise)."""
    theta_before: Tensor
    """(d,) the server's reference model before this round's aggregation."""
    theta_after: Tensor
    """(d,) the server's model after this round (equal to ``theta_before`` between Romoa syncs)."""
    uploads: Tensor
    """(n, d) the deltas the aggregator saw (after the attack replaced the malicious rows)."""
    client_ids: Tensor
    """(n,) which clients uploaded."""
    malicious: Tensor
    """(n,) bool: which of those rows were crafted by the attack (ground truth, for plots)."""
    sync: bool
    """Whether the aggregate was applied (always True in the synchronous protocol)."""
    lr: float
    aggregator: Any = None
    """The aggregator object (e.g. to read Romoa's sanitizing factors)."""
