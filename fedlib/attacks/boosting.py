"""Explicit boosting (Bhagoji et al. ICML'19): Romoa's TPA (Romoa §2.2, Eq. 3) and L2A's EB.

* **TPA** — targeted model poisoning with explicit boosting. From θ_ref the attacker takes
  local SGD steps on the union of its target samples relabelled to the poison label (Romoa
  Eq. 3's 𝓛({x_i, y'_i}, ·)) and its own benign data (Bhagoji's stealthy variant keeps the
  benign objective so overall accuracy is untouched). Romoa §2.2: "a boost factor in
  original TPA is omitted here", so ``boost`` defaults to 1; ``boost="n/m"`` (the inverse of
  the attackers' share of the mean, Bhagoji's explicit boosting) or a float are options. The
  attacker's poisoned local state *persists* like an honest participant's: between two
  changes of θ_ref (Romoa's lookahead iterations) each call takes ``steps`` more steps from
  where the last one stopped, so at lookahead iteration k its path holds k steps, as the
  honest paths do; when θ_ref changes (a sync) the state moves towards it at the moving rate
  γ (Algorithm 2 line 11; γ = 1 restarts from θ_ref, which in the synchronous protocol is
  every round). ``lookahead="restart"`` is the old behaviour (every call ``steps`` steps from
  θ_ref). MNIST: 6 → 3; CIFAR-10: frog → bird, i.e. class indices 6 → 2 (the Romoa text's
  "7 → 3" counts classes from 1).
* **EB** — L2A's untargeted adaptation (L2A appendix E.1): E = 5 gradient-*ascent* steps with
  step size η (the FL learning rate) on the attacker's own data, delta boosted by K/M
  (default: K clients / M attackers of the whole federation, 100/20 = 5 in L2A's setting,
  read from ``AttackContext.population`` and ``num_attackers_total``). The L2A code boosts the wrong
  vector (code-facts file); this boosts the attacker's delta θ_ref − θ_E as the paper states.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..context import AttackContext
from .base import Attack, Stealth, repeat_rows


def targeted_sgd(ctx: AttackContext, theta: Tensor, x_target: Tensor, y_poison: Tensor,
                 steps: int, lr: float, batch_size: int, poison_weight: float = 1.0) -> Tensor:
    """Bhagoji et al.: SGD from θ (d,) on the union (targets → poison label) ∪ benign data.

    Every step's batch is all r target samples (relabelled) plus a fresh minibatch of B of the
    attacker's benign data ``ctx.data`` drawn from ``ctx.generator`` (targets only when it has
    none); the loss is the mean cross-entropy over the union, the targets weighted by
    ``poison_weight`` w: (Σ_benign CE + w·Σ_targets CE) / (B + w·r).
    """
    x_b, y_b = ctx.data
    theta = theta.detach().clone()
    with torch.enable_grad():
        theta = _targeted_steps(ctx, theta, x_b, y_b, x_target, y_poison, steps, lr, batch_size,
                                poison_weight)
    return theta


def _targeted_steps(ctx, theta, x_b, y_b, x_target, y_poison, steps, lr, batch_size,
                    poison_weight):
    have_benign = len(y_b) > 0
    nt = len(y_poison)
    for _ in range(steps):
        if have_benign:
            k = min(batch_size, len(y_b))
            idx = torch.randperm(len(y_b), generator=ctx.generator)[:k].to(y_b.device)
            x = torch.cat([x_b[idx], x_target])
        else:
            x = x_target
        th = theta.requires_grad_(True)
        logits = ctx.forward(th, x)
        nb = len(x) - nt
        loss = poison_weight * F.cross_entropy(logits[nb:], y_poison, reduction="sum")
        if have_benign:
            loss = loss + F.cross_entropy(logits[:nb], y_b[idx], reduction="sum")
        loss = loss / (nb + poison_weight * nt)
        (g,) = torch.autograd.grad(loss, th)
        theta = (th - lr * g).detach()
    return theta


LOOKAHEAD = ("persistent", "restart")
"""TPA's local state across calls: kept while θ_ref is unchanged, or rebuilt from θ_ref."""


class TPA(Attack):
    """Romoa's TPA: Bhagoji et al.'s targeted model poisoning (Romoa §2.2, Eq. 3).

    Knowledge: partial — the global model θ_ref, the attackers' own data and the target
    samples it chose (no benign updates, no aggregation rule). All m attackers send the same
    delta (collusion), each mixed with its own honest update by the stealth factor.

    Params: ``source`` (6) and ``poison`` (3) labels, ``num_targets`` (10), ``target_split``
    ("test" or "train"), ``target_seed`` (0: which source samples), ``steps`` (local steps per
    call; None = the round's local steps: one per lookahead iteration in Romoa's protocol),
    ``lr`` (None = the FL lr), ``boost`` (1 = omitted, Romoa §2.2; ``"n/m"`` = uploads of the
    round / attackers of the round, Bhagoji's explicit boosting; or a float > 0),
    ``lookahead`` ("persistent": the poisoned local state carries over while θ_ref is
    unchanged and moves towards a new θ_ref at ``moving_rate`` γ; "restart": ``steps`` steps
    from θ_ref at every call), ``moving_rate`` (1), ``poison_weight`` (1: weight of the target
    loss), ``stealth`` α and ``stealth_base``. ``prepare(task)`` picks the targets, sets
    ``targets = (x, y_true, y_poison)`` and forgets the local state.
    """

    name = "tpa"
    knowledge = "partial"

    def __init__(self, source: int = 6, poison: int = 3, num_targets: int = 10,
                 target_split: str = "test", target_seed: int = 0, steps: Optional[int] = None,
                 lr: Optional[float] = None, boost: Union[float, str] = 1.0,
                 lookahead: str = "persistent", moving_rate: float = 1.0,
                 poison_weight: float = 1.0, stealth: Stealth = 1.0,
                 stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if source == poison:
            raise ValueError(f"poison label must differ from the source label, both {source}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be ≥ 1, got {num_targets}")
        if target_split not in ("test", "train"):
            raise ValueError(f"target_split must be 'test' or 'train', got {target_split!r}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if isinstance(boost, str):
            if boost != "n/m":
                raise ValueError(f"boost must be a positive number or 'n/m', got {boost!r}")
        elif isinstance(boost, bool) or not (isinstance(boost, (int, float)) and boost > 0):
            raise ValueError(f"boost must be a positive number or 'n/m', got {boost!r}")
        if lookahead not in LOOKAHEAD:
            raise ValueError(f"lookahead must be one of {LOOKAHEAD}, got {lookahead!r}")
        if isinstance(moving_rate, bool) or not (isinstance(moving_rate, (int, float))
                                                 and 0 < moving_rate <= 1):
            raise ValueError(f"moving_rate must be in (0, 1], got {moving_rate!r}")
        if not poison_weight > 0:
            raise ValueError(f"poison_weight must be positive, got {poison_weight}")
        self.source, self.poison, self.num_targets = int(source), int(poison), int(num_targets)
        self.target_split, self.target_seed = target_split, int(target_seed)
        self.steps, self.lr, self.boost, self.poison_weight = steps, lr, boost, float(poison_weight)
        self.lookahead, self.moving_rate = lookahead, float(moving_rate)
        self._local: dict[int, tuple[int, Tensor, Tensor]] = {}

    def prepare(self, task) -> None:
        """Pick ``num_targets`` samples of the source label (seeded, deterministic)."""
        x, y = (task.x_test, task.y_test) if self.target_split == "test" else \
            (task.x_train, task.y_train)
        for lab in (self.source, self.poison):
            if not 0 <= lab < task.num_classes:
                raise ValueError(f"label {lab} outside 0..{task.num_classes - 1}")
        self.set_targets(x, y)
        self._local = {}

    def set_targets(self, x: Tensor, y: Tensor) -> None:
        """Choose the targets from (x, y) directly (what ``prepare`` does with the task)."""
        cand = torch.nonzero(y == self.source).flatten()
        if len(cand) < self.num_targets:
            raise ValueError(f"only {len(cand)} samples of label {self.source}, "
                             f"need {self.num_targets}")
        g = torch.Generator().manual_seed(self.target_seed)
        pick = cand[torch.randperm(len(cand), generator=g)[: self.num_targets].to(cand.device)]
        pick = pick.sort().values
        xt, yt = x[pick], y[pick]
        self.targets = (xt, yt, torch.full_like(yt, self.poison))

    def boost_factor(self, ctx: AttackContext) -> float:
        """The explicit boost: 1 (omitted, Romoa §2.2), n/m (Bhagoji et al.) or the given float."""
        if self.boost == "n/m":
            return float(ctx.num_clients) / ctx.num_malicious
        return float(self.boost)

    def local_start(self, ctx: AttackContext) -> Tensor:
        """Where this call's poisoned steps start (Algorithm 2 lines 7 and 11 for the adversary).

        ``"restart"``, or no state yet, or a new run (a round not after the last one): θ_ref.
        ``"persistent"``: the last poisoned state while θ_ref is unchanged; after a change of
        θ_ref (a sync), that state moved towards it at γ: θ_p − γ(θ_p − θ_ref).
        """
        prev = self._local.get(ctx.replica)
        if self.lookahead == "restart" or prev is None or ctx.round <= prev[0] \
                or prev[2].shape != ctx.theta.shape:
            return ctx.theta.detach().clone()
        _, ref, state = prev
        if torch.equal(ref, ctx.theta):
            return state.clone()
        return torch.lerp(state, ctx.theta.detach().to(state.dtype), self.moving_rate)

    def craft(self, ctx: AttackContext) -> Tensor:
        """boost · (θ_ref − θ_poisoned), the same for every attacker (Romoa Eq. 3)."""
        if self.targets is None:
            raise ValueError("TPA has no targets: call prepare(task) or set_targets(x, y) first")
        xt, _, yp = self.targets
        xt, yp = xt.to(ctx.theta.device), yp.to(ctx.theta.device)
        steps = self.steps or ctx.local_steps
        lr = self.lr or ctx.lr
        theta_p = targeted_sgd(ctx, self.local_start(ctx), xt, yp, steps, lr, ctx.batch_size,
                               self.poison_weight)
        if self.lookahead == "persistent":
            self._local[ctx.replica] = (ctx.round, ctx.theta.detach().clone(), theta_p)
        delta = self.boost_factor(ctx) * (ctx.theta - theta_p)
        return repeat_rows(delta, ctx.num_malicious)


class ExplicitBoosting(Attack):
    """L2A's EB baseline (untargeted explicit boosting, Bhagoji et al. adapted by L2A E.1).

    Knowledge: partial — the global model and the attackers' own data. E gradient-ascent
    steps with step η on the pooled attacker data, delta boosted by K/M; all m attackers send
    it. Params: ``steps`` E (5), ``lr`` (None = the FL lr η), ``batch_size`` (None = the
    round's B), ``boost`` (None = K/M: all clients / all attackers of the federation, L2A
    App. E.1, 100/20 = 5 — not this round's uploads/attackers; a hand-built context without
    ``population`` and ``num_attackers_total`` then needs ``boost`` given), stealth.
    Fallback: an ascent that overflows stops at its last finite iterate (``last_steps``).
    """

    name = "eb"
    knowledge = "partial"

    def __init__(self, steps: int = 5, lr: Optional[float] = None,
                 batch_size: Optional[int] = None, boost: Optional[float] = None,
                 stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if boost is not None and not (boost > 0 and boost < float("inf")):
            raise ValueError(f"boost must be positive and finite, got {boost}")
        self.steps, self.lr, self.batch_size, self.boost = int(steps), lr, batch_size, boost
        self.last_steps: Optional[int] = None

    def boost_factor(self, ctx: AttackContext) -> float:
        """The explicit boost K/M of L2A App. E.1 (federation sizes), or the given ``boost``."""
        if self.boost is not None:
            return float(self.boost)
        K, M = ctx.population, ctx.num_attackers_total
        if K is None or M is None:
            raise ValueError("eb: the default boost K/M needs AttackContext.population (K) and "
                             "num_attackers_total (M), which this context lacks; pass boost=... "
                             "explicitly (L2A: 100/20 = 5)")
        if not (K >= 1 and 1 <= M <= K):
            raise ValueError(f"eb: need 1 ≤ M ≤ K, got K = {K}, M = {M}")
        return float(K) / float(M)

    def craft(self, ctx: AttackContext) -> Tensor:
        """(K/M) · (θ_ref − θ_E), θ_E after E ascent steps on the attackers' data.

        Ascent on a model the attack has already blown up can overflow: the ascent then stops
        at its last finite iterate (``last_steps`` < E; 0 steps sends a zero delta).
        """
        x, y = ctx.data
        if len(y) == 0:
            raise ValueError("EB needs the attackers' local data, which is empty")
        theta_e, self.last_steps = ctx.theta, 0
        for _ in range(self.steps):            # one call per step: the same draws as E at once
            nxt = ctx.train(theta_e, x, y, 1, self.lr or ctx.lr,
                            self.batch_size or ctx.batch_size, ascent=True)
            if not bool(torch.isfinite(nxt).all()):
                break
            theta_e, self.last_steps = nxt, self.last_steps + 1
        delta = self.boost_factor(ctx) * (ctx.theta - theta_e)
        return repeat_rows(delta, ctx.num_malicious)
