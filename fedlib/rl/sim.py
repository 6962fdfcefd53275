"""The attackers' simulated federation (L2A §4.3): B episodes as one federation's replicas.

Each replica of the federation is one episode of the MDP of §4.1; the round loop is the real
one (:class:`fedlib.protocols.SyncRounds` — sampling, local training, the attack seam,
aggregation), so the attackers simulate exactly the server real runs use. Per round t of
replica b:

1. the server samples w of the K clients uniformly without replacement; clients 0..M−1 are the
   attackers, so m = |sampled ∩ [0, M)| (exactly as the real server would);
2. each sampled benign client takes ``local_steps`` SGD steps from θ_t on minibatches of B
   drawn i.i.d. (with replacement) from P̃ (the task's ``iid_pool``: one stream per replica and
   round) and uploads Δ = θ_t − θ'; the attackers' own honest training is skipped (their hook
   never reads it);
3. each sampled attacker uploads the crafted update (:mod:`fedlib.rl.actions`; one update shared
   by all m of them, §4.3: π₁ = … = π_M), through the federation's attack seam;
4. the server sets θ_{t+1} = θ_t − Aggr(Δ), its rule and parameters simulated exactly (the
   federation's ``nonfinite="skip"``: a non-finite upload counts as a zero update, and an
   aggregate that would make θ non-finite is not applied: a simulated episode never dies of
   overflow); for the count-dependent rules (Krum, multi-Krum, trimmed mean, Bulyan) with
   ``f="sampled"`` the rule gets f = m, the number of attackers actually sampled this round,
   capped at the largest f the rule accepts with w uploads (the attackers know m, §4.4, and the
   authors' code passing the global M = 20 with w = 10 makes every Krum score 0).

Episodes are the federation's replicas on separate clocks (``separate_clocks=True``): in
``"attack_step"`` mode one env step advances each replica to *its* next round with an attacker,
so replicas move by different numbers of rounds; a reset restarts a replica from θ₀ with the
episode's seed. Every random draw comes from a stream seeded by (replica seed, episode, round,
purpose) through :func:`fedlib.engine.seed_for`, so a replica's trajectory does not depend on
which other replicas run beside it, and the caller's global RNG is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .. import aggregators
from ..checkpoint import federation_state, load_federation_state
from ..config import RunConfig
from ..context import AttackContext
from ..engine import Task, seed_for
from ..federation import Federation
from . import actions as act
from .config import COUNT_RULES, EnvConfig


LOSS_CAP = 1e4
"""The held-out loss of a destroyed model (non-finite logits), so that rewards stay finite."""


def max_f(rule: str, n: int, params: dict) -> int:
    """The largest f rule ``rule`` accepts with n uploads (Krum n > 2f + 2, trimmed mean n > 2f,
    Bulyan n ≥ 4f + 3)."""
    if rule in ("krum", "multi_krum"):
        return (n - 3) // 2
    if rule == "trimmed_mean":
        return (n - 1) // 2
    if rule == "bulyan":
        return (n - 3) // 4
    raise ValueError(f"{rule} has no f")


def attackers_weight(weights: Any, num_attackers: int) -> float | None:
    """The attackers' total weight Σ_{i<M} wᵢ in an aggregation's per-upload weights (uploads in
    participant order, as in Romoa's protocol); None when the rule reported no weights."""
    if weights is None:
        return None
    return float(torch.as_tensor(weights, dtype=torch.float64).reshape(-1)[:num_attackers].sum())


def scale_last_layer(v: Tensor) -> Tensor:
    """Min-max scale each row to [−1, 1] (L2A §4.3's compressed state); constant rows give 0."""
    lo, hi = v.min(dim=1, keepdim=True).values, v.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (v - lo) / span.clamp_min(1e-30) * 2 - 1, torch.zeros_like(v))
    return out.clamp(-1.0, 1.0)


class Simulator:
    """B episodes of the attackers' simulated federation; see the module docstring."""

    def __init__(self, config: EnvConfig, seeds: Sequence[int]):
        if len(seeds) < 1:
            raise ValueError("need at least one replica seed")
        self.cfg = cfg = config
        self.B = len(seeds)
        self.model = cfg.build_model()
        self.spec = cfg.spec()
        self.d = self.spec.dim
        self.theta0 = cfg.theta0.detach().clone()
        dev = self.theta0.device
        self.x, self.y = (t.to(dev) for t in cfg.data)
        self.hx, self.hy = (t.to(dev) for t in cfg.holdout)
        self.root = None if cfg.root is None else tuple(t.to(dev) for t in cfg.root)
        self.last_slice = self.spec.layers[-1][1]
        self.forward = act.batched_forward(self.model, self.spec)
        self.grad = act.loss_grad_fn(self.forward)
        self.rule = cfg.rule_key()
        self.params = dict(cfg.aggregator_params)
        w = cfg.clients_per_round
        if self.rule in COUNT_RULES:
            f = self.params.get("f", "sampled")
            top = max_f(self.rule, w, self.params)
            if top < 0:
                raise ValueError(f"{self.rule} cannot aggregate w = {w} uploads")
            fixed_ok = not isinstance(f, bool) and isinstance(f, int) and 0 <= f <= top
            if f != "sampled" and not fixed_ok:
                raise ValueError(f"{self.rule}: f must be 'sampled' or an integer in [0, {top}] "
                                 f"with w = {w}, got {f!r}")
        for m in {0, min(w, cfg.num_attackers)}:
            self._build_rule(m)  # validates the rule's parameters before any work
        server_params = dict(self.params)
        if self.rule in COUNT_RULES and server_params.get("f", "sampled") == "sampled":
            server_params["f"] = "per_call"                # f from ctx.num_malicious (f_for)
        self.step_size = cfg.search_lr if cfg.search_lr is not None else cfg.lr
        self.seeds = [int(s) for s in seeds]
        self.episode = [-1] * self.B
        self.tau = [0] * self.B
        self.m_next = torch.zeros(self.B, dtype=torch.long)
        self.cur_loss = torch.zeros(self.B, dtype=self.theta0.dtype)
        self.attacker_weight = torch.zeros(self.B, dtype=torch.float32)
        self.last: list[dict[str, Any]] = [{} for _ in range(self.B)]
        self.fed = self._federation(aggregators.get(self.rule, **server_params), server_params)

    def _federation(self, server: Any, server_params: dict) -> Federation:
        """The simulated server: every client's local set is P̃, clients 0..M−1 attack."""
        cfg = self.cfg
        every = torch.arange(len(self.x), device=self.x.device)
        task = Task(model=self.model, spec=self.spec, x_train=self.x, y_train=self.y,
                    x_test=self.hx, y_test=self.hy, clients=[every] * cfg.num_clients,
                    num_classes=self.spec.shapes[-1][0], device=self.theta0.device,
                    iid_pool=True)
        small = self.d < 10_000 or self.theta0.device.type == "cuda"
        protocol = dict(protocol="romoa", tau=cfg.tau, moving_rate=cfg.moving_rate) \
            if cfg.protocol == "romoa" else dict(clients_per_round=cfg.clients_per_round,
                                                 local_steps=cfg.local_steps)
        run = RunConfig(dataset="learned", model=cfg.model, width=cfg.width,
                        num_clients=cfg.num_clients, lr=cfg.lr, batch_size=cfg.batch_size,
                        num_attackers=cfg.num_attackers, aggregator=self.rule,
                        aggregator_params=server_params,
                        strategy="vmap" if small else "sequential", device=str(self.theta0.device),
                        **protocol)
        run.validate()
        return Federation(task, run, [self._episode_seed(b) for b in range(self.B)],
                          theta0=self.theta0, aggregator=server,
                          server_update=self.server_update if self.rule == "fltrust" else None,
                          separate_clocks=True, nonfinite="skip")

    # ------------------------------------------------------------------ views of the federation
    @property
    def theta(self) -> Tensor:
        """(B, d): each episode's current global model θ_t."""
        return self.fed.theta

    @theta.setter
    def theta(self, value: Tensor) -> None:
        self.fed.theta = value

    @property
    def round(self) -> list[int]:
        """Each episode's FL round t (the federation's clock of that replica)."""
        return self.fed.rounds

    # ------------------------------------------------------------------ pieces
    def _episode_seed(self, b: int) -> int:
        return seed_for(self.seeds[b], "episode", self.episode[b])

    def _gen(self, b: int, t: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(
            seed_for(self.seeds[b], "episode", self.episode[b], "round", t, purpose))

    def sample(self, b: int, t: int) -> tuple[Tensor, Tensor]:
        """(ids (w,), is_malicious (w,)): the clients the server samples in round t of replica b."""
        ids = self.fed.protocol.draw(self.fed.seeds[b], t, self.cfg.num_clients)
        return ids, ids < self.cfg.num_attackers

    def f_for(self, m: int) -> int | None:
        """The f a count-dependent rule gets when m attackers are sampled (None for other rules)."""
        if self.rule not in COUNT_RULES:
            return None
        f = self.params.get("f", "sampled")
        if f == "sampled":
            return min(m, max_f(self.rule, self.cfg.clients_per_round, self.params))
        return int(f)

    def _build_rule(self, m: int) -> Any:
        params = dict(self.params)
        f = self.f_for(m)
        if f is not None:
            params["f"] = f
        return aggregators.get(self.rule, **params)

    def _search_batches(self, gens: list[torch.Generator], e_max: int) -> Tensor:
        """(n, G, E_max, B̃) local-search minibatch indices, drawn step by step from each stream."""
        cfg = self.cfg
        out = torch.zeros(len(gens), cfg.trajectories, max(e_max, 1), cfg.search_batch,
                          dtype=torch.long)
        for i, g in enumerate(gens):
            for s in range(e_max):
                out[i, :, s] = torch.randint(len(self.x), (cfg.trajectories, cfg.search_batch),
                                             generator=g)
        return out.to(self.x.device)

    @torch.no_grad()
    def holdout_loss(self, theta: Tensor) -> Tensor:
        """(n,) f(θ): the cross-entropy of each model on the attackers' held-out data (§4.1),
        capped at :data:`LOSS_CAP` (a model whose logits overflow has an infinite or NaN loss:
        the attack has destroyed it, and the reward must stay finite)."""
        n = theta.shape[0]
        loss = act.row_losses(self.forward, theta, self.hx.expand(n, *self.hx.shape),
                              self.hy.expand(n, -1))
        return torch.nan_to_num(loss, nan=LOSS_CAP, posinf=LOSS_CAP).clamp(max=LOSS_CAP)

    def server_update(self, theta: Tensor) -> Tensor:
        """FLTrust's Δ₀ = η·∇F₀(θ) (R, d) on the root data (L2A App. E.1, as the real server)."""
        n = theta.shape[0]
        return self.cfg.lr * self.grad(theta, self.root[0].expand(n, *self.root[0].shape),
                                       self.root[1].expand(n, -1))

    def craft(self, rows: list[int], actions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The crafted update (len(rows), d) of each listed replica for its action row."""
        cfg = self.cfg
        theta = self.theta[rows]
        if cfg.action == "full":
            return act.craft_full(actions, cfg.full_scale, cfg.lr, theta), {}
        p = act.decode_action(actions, cfg.action, cfg.ranges)
        e_need = int(p["E"].max()) if len(p["E"]) else 0
        gens = [self._gen(b, self.round[b], "search") for b in rows]
        batches = self._search_batches(gens, e_need)
        if cfg.action == "gamma_E":
            upd, g, e = act.craft_gamma_E(self.grad, theta, p["gamma"], p["E"], batches,
                                          self.x, self.y, self.step_size)
            return upd, {"gamma": g, "E": e}
        g0 = self.grad(theta, self.root[0].expand(len(rows), *self.root[0].shape),
                       self.root[1].expand(len(rows), -1))
        lam = p["lambda"].to(theta)
        if cfg.fltrust_objective == "cosine":
            fn = act.cosine_objective_grad_fn(self.forward, theta, g0, lam)
        else:
            fn = act.root_loss_objective_grad_fn(self.forward, self.root, lam)
        upd, g, e = act.craft_E_lambda(fn, theta, g0, p["E"], batches, self.x, self.y,
                                       self.step_size, constrain=cfg.fltrust_objective == "cosine")
        return upd, {"gamma": g, "E": e, "lambda": p["lambda"]}

    # ------------------------------------------------------------------ rounds
    def play_round(self, rows: list[int], actions: Tensor | None) -> None:
        """Simulate one round of each listed replica on the federation; ``actions``
        (len(rows), k) or None (only valid for rounds without sampled attackers)."""
        ms = [int(self.sample(b, self.round[b])[1].sum()) for b in rows]
        att = [i for i, m in enumerate(ms) if m > 0]
        crafted = torch.zeros(len(rows), self.d, dtype=self.theta.dtype, device=self.theta.device)
        info: dict[str, Tensor] = {}
        if att:
            if actions is None:
                raise ValueError("a round with sampled attackers needs an action")
            made, info = self.craft([rows[i] for i in att], torch.as_tensor(actions)[att])
            crafted[att] = made.to(crafted.dtype)

        def hook(ctx: AttackContext) -> Tensor:        # every sampled attacker sends the update
            return crafted[ctx.replica].expand(ctx.num_malicious, -1)

        hook.reads_honest_updates = False              # attackers skip honest local training

        before = [self.round[b] for b in rows]
        res = self.fed.step(malicious=hook, rows=rows)
        where = {i: j for j, i in enumerate(att)}
        for i, b in enumerate(rows):
            m = ms[i]
            self.last[b] = {"round": before[i], "uploads": res.uploads[i],
                            "malicious": res.is_malicious[i], "client_ids": res.client_ids[i],
                            "f": self.f_for(m), "num_attackers": m,
                            **({k: v[where[i]].item() for k, v in info.items()} if m else {})}

    def _advance_to_attack(self, rows: list[int]) -> None:
        """Simulate attacker-free rounds of the listed replicas until each samples an attacker."""
        need = [b for b in rows if int(self.sample(b, self.round[b])[1].sum()) == 0]
        while need:
            self.play_round(need, None)
            need = [b for b in need if int(self.sample(b, self.round[b])[1].sum()) == 0]

    def _refresh(self, rows: list[int]) -> None:
        for b in rows:
            self.m_next[b] = int(self.sample(b, self.round[b])[1].sum())
            if self.cfg.protocol == "romoa":
                self.attacker_weight[b] = self._attacker_weight(b)
        self.cur_loss[rows] = self.holdout_loss(self.theta[rows])

    def _attacker_weight(self, b: int) -> float:
        """The attackers' total weight in replica b's last aggregation (0 before the first)."""
        share = attackers_weight(self.fed.weights(b), self.cfg.num_attackers)
        return 0.0 if self.round[b] == 0 or share is None else min(max(share, 0.0), 1.0)

    # ------------------------------------------------------------------ episodes
    def reset(self, rows: list[int], seeds: Sequence[int | None] | None = None) -> None:
        """Start a new episode in each listed replica (a new seed restarts its episode count)."""
        for i, b in enumerate(rows):
            s = None if seeds is None else seeds[i]
            if s is not None:
                self.seeds[b], self.episode[b] = int(s), 0
            else:
                self.episode[b] += 1
            self.tau[b] = 0
            self.last[b] = {}
        self.fed.reset_replicas(rows, [self._episode_seed(b) for b in rows])
        if self.cfg.step_unit == "attack_step":
            self._advance_to_attack(rows)
        self._refresh(rows)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """One env step of every replica: (reward (B,), done (B,) bool); r = f(θ_next) − f(θ_t)."""
        rows = list(range(self.B))
        before = self.cur_loss.clone()
        self.play_round(rows, actions)
        if self.cfg.step_unit == "attack_step":
            self._advance_to_attack(rows)
        for b in rows:
            self.tau[b] += 1
        self._refresh(rows)
        done = torch.tensor([t >= self.cfg.horizon for t in self.tau])
        return self.cur_loss - before, done

    def observation(self) -> dict[str, Tensor]:
        """{"last_layer": (B, k) in [−1, 1], "attackers": (B,), "progress": (B, 1) τ/H}."""
        obs = {"last_layer": scale_last_layer(self.theta[:, self.last_slice]).float(),
               "attackers": self.m_next.clone()}
        if self.cfg.time_feature:
            obs["progress"] = (torch.tensor(self.tau, dtype=torch.float32)
                               / self.cfg.horizon)[:, None]
        if self.cfg.protocol == "romoa":
            obs["attacker_weight"] = self.attacker_weight.clone()[:, None]
        return obs

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (plain data and tensors): the episodes'
        bookkeeping and the federation's state (θ, clocks, protocol and rule state)."""
        return {"seeds": list(self.seeds), "episode": list(self.episode), "tau": list(self.tau),
                "m_next": self.m_next.clone(), "cur_loss": self.cur_loss.clone(),
                "attacker_weight": self.attacker_weight.clone(),
                "federation": copy.deepcopy(federation_state(self.fed))}  # no live tensors

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output."""
        theta = state["federation"]["theta"]
        if tuple(theta.shape) != (self.B, self.d):
            raise ValueError(f"state is for {tuple(theta.shape)} replicas × parameters, "
                             f"this simulator has ({self.B}, {self.d})")
        self.seeds, self.episode = list(state["seeds"]), list(state["episode"])
        self.tau = list(state["tau"])
        self.fed.reset_replicas(range(self.B), [self._episode_seed(b) for b in range(self.B)])
        load_federation_state(self.fed, copy.deepcopy(state["federation"]))
        self.m_next, self.cur_loss = state["m_next"].clone(), state["cur_loss"].clone()
        self.attacker_weight = state["attacker_weight"].clone()
