"""The attackers' simulated federation (L2A §4.3), batched over B independent replicas.

Each replica is one episode of the MDP of §4.1. Per round t of replica b:

1. the server samples w of the K clients uniformly without replacement; clients 0..M−1 are the
   attackers, so m = |sampled ∩ [0, M)| (exactly as the real server would);
2. each sampled benign client takes ``local_steps`` SGD steps from θ_t on minibatches of B drawn
   i.i.d. (with replacement) from P̃ and uploads Δ = θ_t − θ';
3. each sampled attacker uploads the crafted update (:mod:`fedlib.rl.actions`; one update shared
   by all m of them, §4.3: π₁ = … = π_M);
4. the server sets θ_{t+1} = θ_t − Aggr(Δ), its rule and parameters simulated exactly (a
   non-finite upload counts as a zero update, and an aggregate that would make θ non-finite is
   not applied: a simulated episode never dies of overflow); for the
   count-dependent rules (Krum, multi-Krum, trimmed mean, Bulyan) with ``f="sampled"`` the rule
   gets f = m, the number of attackers actually sampled this round, capped at the largest f the
   rule accepts with w uploads (the attackers know m, §4.4, and the authors' code passing the
   global M = 20 with w = 10 makes every Krum score 0).

Every random draw comes from a generator seeded by (replica seed, episode, round, purpose)
through :func:`fedlib.engine.seed_for`, so a replica's trajectory does not depend on which other
replicas run beside it, and the caller's global RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .. import aggregators
from ..context import RoundContext
from ..engine import seed_for
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


def scale_last_layer(v: Tensor) -> Tensor:
    """Min-max scale each row to [−1, 1] (L2A §4.3's compressed state); constant rows give 0."""
    lo, hi = v.min(dim=1, keepdim=True).values, v.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (v - lo) / span.clamp_min(1e-30) * 2 - 1, torch.zeros_like(v))
    return out.clamp(-1.0, 1.0)


class Simulator:
    """B replicas of the attackers' simulated federation; see the module docstring."""

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
        if self.rule in COUNT_RULES:
            server_params["f"] = "per_call"                # f from ctx.num_malicious (f_for)
        self.server = aggregators.get(self.rule, **server_params)
        self.step_size = cfg.search_lr if cfg.search_lr is not None else cfg.lr
        self.seeds = [int(s) for s in seeds]
        self.episode = [-1] * self.B
        self.round = [0] * self.B
        self.tau = [0] * self.B
        self.theta = self.theta0.expand(self.B, -1).clone()
        self.m_next = torch.zeros(self.B, dtype=torch.long)
        self.cur_loss = torch.zeros(self.B, dtype=self.theta0.dtype)
        self.rules: list[dict[int, Any]] = [{} for _ in range(self.B)]
        self.last: list[dict[str, Any]] = [{} for _ in range(self.B)]

    # ------------------------------------------------------------------ pieces
    def _gen(self, b: int, t: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(
            seed_for(self.seeds[b], "episode", self.episode[b], "round", t, purpose))

    def sample(self, b: int, t: int) -> tuple[Tensor, Tensor]:
        """(ids (w,), is_malicious (w,)): the clients the server samples in round t of replica b."""
        ids = torch.randperm(self.cfg.num_clients, generator=self._gen(b, t, "sample"))
        ids = ids[: self.cfg.clients_per_round]
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

    def rule_for(self, b: int, m: int) -> Any:
        """Replica b's aggregator object for a round with m sampled attackers."""
        key = self.f_for(m)
        key = -1 if key is None else key
        if key not in self.rules[b]:
            self.rules[b][key] = self._build_rule(m)
        return self.rules[b][key]

    def _benign_deltas(self, thetas: Tensor, gens: list[torch.Generator], counts: list[int]
                       ) -> Tensor:
        """Σ counts benign uploads: local SGD from each replica's θ on i.i.d. minibatches of P̃."""
        cfg = self.cfg
        rows = thetas.repeat_interleave(torch.tensor(counts), 0)
        if len(rows) == 0:
            return rows
        idx = torch.cat([torch.randint(len(self.x), (c, cfg.local_steps, cfg.batch_size),
                                       generator=g) for g, c in zip(gens, counts)])
        idx = idx.to(self.x.device)
        th = rows
        for s in range(cfg.local_steps):
            th = th - cfg.lr * self.grad(th, self.x[idx[:, s]], self.y[idx[:, s]])
        return rows - th

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
        """Simulate one round of each listed replica; ``actions`` (len(rows), k) or None (no attack
        possible: only valid for rounds without sampled attackers)."""
        sampled = [self.sample(b, self.round[b]) for b in rows]
        mal = torch.stack([m for _, m in sampled])                       # (R, w)
        ids = torch.stack([i for i, _ in sampled])
        ms = mal.sum(1)
        w, R = self.cfg.clients_per_round, len(rows)
        gens = [self._gen(b, self.round[b], "benign") for b in rows]
        benign = self._benign_deltas(self.theta[rows], gens, (w - ms).tolist())
        att = (ms > 0).nonzero().squeeze(1).tolist()
        ups = torch.empty(R, w, self.d, dtype=self.theta.dtype, device=self.theta.device)
        ups[~mal] = benign
        info: dict[str, Tensor] = {}
        if att:
            if actions is None:
                raise ValueError("a round with sampled attackers needs an action")
            crafted, info = self.craft([rows[i] for i in att], torch.as_tensor(actions)[att])
            full = torch.zeros(R, self.d, dtype=ups.dtype, device=ups.device)
            full[att] = crafted.to(ups.dtype)
            ups[mal] = full[mal.nonzero()[:, 0]]              # every attacker sends the update
        theta = self.theta[rows]
        ups = torch.nan_to_num(ups, nan=0.0, posinf=0.0, neginf=0.0) \
            if not bool(torch.isfinite(ups).all()) else ups       # a broken client sends nothing
        new = theta - self._aggregate(rows, ups, theta, ids, ms)
        keep = torch.isfinite(new).all(dim=1, keepdim=True)       # a server keeps a finite model
        self.theta[rows] = torch.where(keep, new, theta)
        where = {i: j for j, i in enumerate(att)}
        for i, b in enumerate(rows):
            m = int(ms[i])
            self.last[b] = {"round": self.round[b], "uploads": ups[i], "malicious": mal[i],
                            "client_ids": ids[i], "f": self.f_for(m), "num_attackers": m,
                            **({k: v[where[i]].item() for k, v in info.items()} if m else {})}
            self.round[b] += 1

    def _aggregate(self, rows: list[int], ups: Tensor, theta: Tensor, ids: Tensor, ms: Tensor
                   ) -> Tensor:
        """θ_t − θ_{t+1} of each listed replica: one batched call of the server's rule (a loop
        over replicas for centered clipping, whose momentum is each replica's own)."""
        if self.rule == "centered_clipping":
            out = []
            for i, b in enumerate(rows):
                rule = self.rule_for(b, int(ms[i]))
                out.append(rule(ups[i], RoundContext(round=self.round[b], theta=theta[i],
                                                     spec=self.spec, lr=self.cfg.lr,
                                                     client_ids=ids[i])))
            return torch.stack(out)
        fs = None if self.rule not in COUNT_RULES else \
            torch.tensor([self.f_for(int(m)) for m in ms], dtype=torch.long)
        ctx = RoundContext(round=self.round[rows[0]], theta=theta, spec=self.spec, lr=self.cfg.lr,
                           client_ids=ids, num_malicious=fs,
                           server_update=(lambda: self.server_update(theta))
                           if self.rule == "fltrust" else None)
        return self.batched_rule(ctx, ups)

    def batched_rule(self, ctx: RoundContext, ups: Tensor) -> Tensor:
        """The server's rule on a replica batch (R, w, d) → (R, d) (f per replica from ctx)."""
        return self.server(ups, ctx)

    def _advance_to_attack(self, rows: list[int]) -> None:
        """Simulate attacker-free rounds of the listed replicas until each samples an attacker."""
        need = [b for b in rows if int(self.sample(b, self.round[b])[1].sum()) == 0]
        while need:
            self.play_round(need, None)
            need = [b for b in need if int(self.sample(b, self.round[b])[1].sum()) == 0]

    def _refresh(self, rows: list[int]) -> None:
        for b in rows:
            self.m_next[b] = int(self.sample(b, self.round[b])[1].sum())
        self.cur_loss[rows] = self.holdout_loss(self.theta[rows])

    # ------------------------------------------------------------------ episodes
    def reset(self, rows: list[int], seeds: Sequence[int | None] | None = None) -> None:
        """Start a new episode in each listed replica (a new seed restarts its episode count)."""
        for i, b in enumerate(rows):
            s = None if seeds is None else seeds[i]
            if s is not None:
                self.seeds[b], self.episode[b] = int(s), 0
            else:
                self.episode[b] += 1
            self.round[b], self.tau[b] = 0, 0
            self.theta[b] = self.theta0
            self.rules[b] = {}
            self.last[b] = {}
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
        return obs

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (plain data and tensors)."""
        momentum = [{k: r.momentum.clone() for k, r in self.rules[b].items()
                     if getattr(r, "momentum", None) is not None} for b in range(self.B)]
        return {"seeds": list(self.seeds), "episode": list(self.episode),
                "round": list(self.round), "tau": list(self.tau), "theta": self.theta.clone(),
                "m_next": self.m_next.clone(), "cur_loss": self.cur_loss.clone(),
                "momentum": momentum}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output."""
        if tuple(state["theta"].shape) != (self.B, self.d):
            raise ValueError(f"state is for {tuple(state['theta'].shape)} replicas × parameters, "
                             f"this simulator has ({self.B}, {self.d})")
        self.seeds, self.episode = list(state["seeds"]), list(state["episode"])
        self.round, self.tau = list(state["round"]), list(state["tau"])
        self.theta = state["theta"].clone()
        self.m_next, self.cur_loss = state["m_next"].clone(), state["cur_loss"].clone()
        self.rules = [{} for _ in range(self.B)]
        for b, mom in enumerate(state["momentum"]):
            for k, v in mom.items():
                rule = self._build_rule(0 if k < 0 else k)
                rule.momentum = v.clone()
                self.rules[b][k] = rule
