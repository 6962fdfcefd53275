"""The adaptive attack against FLTrust (Cao et al. NDSS'21, §"adaptive attack").

Cao et al. instantiate Fang et al.'s framework for FLTrust: maximise s^T(g − g'), g the
FLTrust aggregate before the attack (every sampled client honest), g' after it, s = sign(g).
Because FLTrust rescales every update to the server update's norm, each malicious update is
written g'_i = ‖g_0‖·e_i with a unit vector e_i, and

    g' = Σ_i ReLU(cos(g'_i, g_0))·(‖g_0‖/‖g'_i‖)·g'_i / Σ_i ReLU(cos(g'_i, g_0))

(:func:`fltrust_aggregate`, over malicious and benign updates). The e_i are found by V steps
of gradient ascent on h(e) = s^T(g − g'), each e_i renormalised to the unit sphere after every
step; the best e seen is kept. Knowledge: full — the benign updates, the aggregation rule and
the server update g_0.

**Direction of the deviation** (``direction``). ``"sign"`` is Cao et al.'s literal
s = sign(g): s^T(g − g') weighs every coordinate equally, so on a high-dimensional, noisy
update it rewards flipping many small (noise) coordinates while the trusted malicious updates
still add a large component along g_0 — in our short digits runs this *raised* FLTrust's
accuracy. ``"aggregate"`` (the default) measures the same deviation along the no-attack
aggregate's unit direction, s = g/‖g‖: h = ĝ^T(g − g') is how much the attack shortens the
step the model would take, which is what lowers accuracy (tested).

**Units.** g, g' and h scale with ‖g_0‖ (η times a gradient, ~1e-2), and ‖∇h‖ with √d, so a
raw gradient step σ·∇h on unit vectors would be ~‖g_0‖ too weak on one model and too strong on
another. Each step therefore moves e_i by σ along its normalised gradient:
e_i ← normalise(e_i + σ·∇_{e_i}h/‖∇_{e_i}h‖) — σ is a step on the unit sphere (≈ radians),
i.e. in the units of the (normalised) updates, whatever ‖g_0‖ and d (:func:`ascent_step`).

**Initialisation** (``init``). Cao et al. start from Fang's trimmed-mean ("Trim") attack on
the updates. Its crafted updates oppose the benign direction, so their cosine with g_0 is
usually ≤ 0: trust 0, hence no gradient through the ReLU and no move at all (``init="trim"``,
the literal choice). ``init="trim_trusted"`` (the default) keeps every Trim row whose trust is
already positive and turns the others to 45° from g_0 in the plane of g_0 and their own
direction — ê = normalise(û_⊥ + ĝ_0), û_⊥ the Trim row's unit component orthogonal to g_0 —
so every malicious update starts trusted (cos = 1/√2) and deviating as Trim does;
``init="server"`` starts from e_i = g_0/‖g_0‖.

How the attacker gets g_0 (``server_update``):

* "root" (default, Cao et al.'s assumption): it knows the server's root set; ``prepare(task)``
  rebuilds it with ``fedlib.data.root_set`` from ``root_size``, ``root_q0`` and ``seed``,
  which must equal the run's ``root_size``, ``root_q0`` and ``seed`` (fedlib.runs defaults:
  100, None = 1/C, 0), and g_0 = η·∇F(θ_ref; D_0) exactly as the server computes it;
* "benign_mean": g_0 ≈ mean of the benign updates;
* "own_data": g_0 ≈ one full-batch SGD step on the attackers' own data.

Fallbacks: a zero (or non-finite) g_0 gives every update zero trust, so nothing can be gained;
the attackers then send their honest updates.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..context import AttackContext
from .base import Attack, Stealth, own_updates, reference_updates, safe_norm
from .fang import change_direction, directed_deviation

SERVER_UPDATES = ("root", "benign_mean", "own_data")
INITS = ("trim_trusted", "trim", "server")
DIRECTIONS = ("sign", "aggregate")


def _unit(rows: Tensor) -> Tensor:
    """Rows scaled to unit ℓ2 norm, underflow-safe (a zero row stays zero)."""
    n = safe_norm(rows, keepdim=True)
    return rows / torch.where(n > 0, n, torch.ones_like(n))


def fltrust_aggregate(updates: Tensor, server: Tensor) -> Tensor:
    """FLTrust (Cao et al. Eq. 4–6): Σ ReLU(cos)·(‖g_0‖/‖g_i‖)·g_i / Σ ReLU(cos) (0 if Σ = 0).

    Norms are underflow-safe; a zero row (or a zero g_0) has trust 0. Differentiable in
    ``updates`` everywhere, including where every trust is 0.
    """
    if updates.dim() != 2 or server.shape != updates.shape[1:]:
        raise ValueError(f"need (n, d) updates and a (d,) server update, got "
                         f"{tuple(updates.shape)} and {tuple(server.shape)}")
    unit, s_unit = _unit(updates), _unit(server.unsqueeze(0))[0]
    ts = torch.relu(unit @ s_unit)
    total = ts.sum()
    return safe_norm(server) * (ts @ unit) / torch.where(total > 0, total, torch.ones_like(total))


def trusted_start(crafted: Tensor, server: Tensor) -> Tensor:
    """Unit rows: Trim rows with trust > 0 as they are, the others at 45° from g_0 (see above)."""
    u, g = _unit(crafted), _unit(server.unsqueeze(0))[0]
    cos = u @ g
    perp = _unit(u - cos.unsqueeze(1) * g)
    turned = _unit(perp + g)
    return torch.where((cos > 0).unsqueeze(1), u, turned)


def ascent_step(e: Tensor, grad: Tensor, step: float) -> Tensor:
    """e_i ← normalise(e_i + σ·∇_i/‖∇_i‖): a step σ on the unit sphere (∇_i = 0: e_i stays)."""
    return _unit(e + step * _unit(grad))


class FLTrustAdaptive(Attack):
    """Cao et al.'s adaptive attack on FLTrust (Fang's framework with unit-vector updates).

    Knowledge: full (benign updates, the rule, the server update g_0 — see the module
    docstring). Params: ``server_update`` ("root"), ``root_size`` (100), ``root_q0`` (None =
    1/C), ``seed`` (0), ``iterations`` V (20), ``step_size`` σ (0.1: a step on the unit sphere,
    see "Units"), ``b`` (2, of the Trim initialisation), ``init`` ("trim_trusted", "trim" or
    "server"), ``direction`` ("aggregate" or Cao et al.'s literal "sign"), stealth.
    ``last_gain`` holds h/‖g_0‖ of the last call's uploads (0 = no effect). Works for any
    1 ≤ m and any number of benign rows (one included).
    """

    name = "fltrust_adaptive"
    knowledge = "full"

    def __init__(self, server_update: str = "root", root_size: int = 100,
                 root_q0: Optional[float] = None, seed: int = 0, iterations: int = 20,
                 step_size: float = 0.1, b: float = 2.0, init: str = "trim_trusted",
                 direction: str = "aggregate", stealth: Stealth = 1.0,
                 stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if server_update not in SERVER_UPDATES:
            raise ValueError(f"server_update must be one of {SERVER_UPDATES}, "
                             f"got {server_update!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction
        if iterations < 0 or not (step_size > 0 and step_size < float("inf")):
            raise ValueError(f"need iterations ≥ 0 and a finite step_size > 0, got {iterations}, "
                             f"{step_size}")
        if not b > 1:
            raise ValueError(f"b must be > 1, got {b}")
        self.server_update, self.root_size, self.root_q0, self.seed = \
            server_update, int(root_size), root_q0, int(seed)
        self.iterations, self.step_size, self.b, self.init = int(iterations), float(step_size), \
            float(b), init
        self._task = None
        self._root: Optional[tuple[Tensor, Tensor]] = None
        self.last_gain: Optional[float] = None

    def prepare(self, task) -> None:
        """Rebuild the server's root set D_0 (``server_update="root"``)."""
        self._task = task
        if self.server_update != "root":
            return
        from .. import data
        q0 = self.root_q0 if self.root_q0 is not None else 1.0 / task.num_classes
        idx = data.root_set(task.y_train.cpu().numpy(), self.root_size, q0, seed=self.seed)
        idx = torch.as_tensor(idx, dtype=torch.long, device=task.x_train.device)
        self._root = (task.x_train[idx], task.y_train[idx])

    def server_update_of(self, ctx: AttackContext) -> Tensor:
        """g_0 as the attacker knows it this round."""
        if self.server_update == "root":
            if self._root is None or self._task is None:
                raise ValueError("server_update='root' needs prepare(task) first (or use "
                                 "'benign_mean' / 'own_data')")
            from .. import engine
            return ctx.lr * engine.gradient(self._task, ctx.theta, *self._root)
        if self.server_update == "benign_mean":
            return reference_updates(ctx).mean(0)
        x, y = ctx.data
        if len(y) == 0:
            raise ValueError("server_update='own_data' needs the attackers' data, which is empty")
        return ctx.theta - ctx.train(ctx.theta, x, y, 1, ctx.lr, len(y))

    def start(self, ctx: AttackContext, benign: Tensor, g0: Tensor) -> Tensor:
        """The initial unit vectors e (m, d) of the chosen ``init``."""
        m = ctx.num_malicious
        if self.init == "server":
            return _unit(g0.unsqueeze(0)).expand(m, -1).clone()
        push = -change_direction(benign)                     # Fang's Trim attack on updates
        trim = -directed_deviation(-benign, push, m, self.b, ctx.generator)
        return _unit(trim) if self.init == "trim" else trusted_start(trim, g0)

    def craft(self, ctx: AttackContext) -> Tensor:
        """‖g_0‖·e_i with the e_i from V normalised ascent steps on s^T(g − g')."""
        benign = reference_updates(ctx)
        g0 = self.server_update_of(ctx).detach().to(benign.dtype)
        g0_norm = safe_norm(g0)
        if not (bool(torch.isfinite(g0).all()) and g0_norm > 0):
            self.last_gain = 0.0
            return ctx.honest_updates.clone()                # no trust to gain: stay honest
        before = fltrust_aggregate(torch.cat([own_updates(ctx), ctx.benign_updates]), g0)
        s = torch.sign(before) if self.direction == "sign" else _unit(before.unsqueeze(0))[0]

        def gain(e: Tensor) -> Tensor:                       # h/‖g_0‖, dimensionless
            after = fltrust_aggregate(torch.cat([g0_norm * e, benign]), g0)
            return s @ (before - after) / g0_norm

        e = self.start(ctx, benign, g0)
        best, best_h = e, -float("inf")
        with torch.enable_grad():
            for it in range(self.iterations + 1):            # V steps, V + 1 evaluations
                e = e.detach().requires_grad_(it < self.iterations)
                h = gain(e)
                if float(h.detach()) > best_h:
                    best, best_h = e.detach(), float(h.detach())
                if it < self.iterations:
                    (grad,) = torch.autograd.grad(h, e)
                    e = ascent_step(e.detach(), grad, self.step_size)
        self.last_gain = best_h
        return (g0_norm * best).detach()
