"""The attackers' action spaces and the crafting of their upload (L2A §4.3 and App. E.1).

An action a ∈ [−1, 1]^k is mapped affinely onto the configured ranges (:func:`decode_action`):

* ``"gamma_E"`` — local search: E gradient-ascent steps from θ_t on minibatches of B̃ drawn from
  P̃ (G trajectories, averaged), upload γ(θ_t − θ_E) (§4.3 with λ = 0, App. E.1);
* ``"E_lambda"`` — FLTrust (App. E.1): γ = ‖g₀‖, E ascent steps on
  L(θ) = (1 − λ)F(θ) + λ·cos(θ_t − θ, g₀) projected onto ‖θ_t − θ‖ ≤ ‖g₀‖, or on the alternate
  L(θ) = (1 − λ)F(θ) − λF₀(θ); g₀ = ∇F₀(θ_t) on the root data as the attackers know it;
* ``"full"`` — the crafted gradient itself, g̃ = full_scale·a, uploaded as η·g̃ (the 28-parameter
  synthetic MLP, §4.1/§4.3).

E is continuous for the policy and rounded to the nearest integer (ties to even) before use.
NaN policy (App. E.1): a crafted update with NaN/Inf is recomputed with (0.5γ, E − 1) on the same
minibatches until it is finite; E = 0 or γ = 0 gives the zero update. Crafting never sees the
benign clients' uploads: its inputs are θ_t, the action, P̃ and the root data.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..flat import ParamSpec

ACTION_KEYS = {"gamma_E": ("gamma", "E"), "E_lambda": ("E", "lambda")}

GradFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(θ (n, d), x (n, b, ...), y (n, b)) ↦ per-row ∇ of the ascent objective (n, d)."""


def action_space(action: str, dim: int) -> gym.spaces.Box:
    """The policy's action box [−1, 1]^k (k = 2, or d for ``"full"``)."""
    k = dim if action == "full" else len(ACTION_KEYS[action])
    return gym.spaces.Box(-1.0, 1.0, (k,), dtype=np.float32)


def decode_action(a: Tensor, action: str, ranges: dict[str, tuple[float, float]]
                  ) -> dict[str, Tensor]:
    """Map a ∈ [−1, 1]^k (B, k) onto the ranges (App. E.1); E rounded to an integer (B,) long."""
    a = torch.as_tensor(a, dtype=torch.float64).clamp(-1.0, 1.0)
    if a.dim() != 2 or a.shape[1] != len(ACTION_KEYS[action]):
        raise ValueError(f"{action} actions must have shape (B, {len(ACTION_KEYS[action])}), "
                         f"got {tuple(a.shape)}")
    out = {}
    for j, key in enumerate(ACTION_KEYS[action]):
        lo, hi = ranges[key]
        v = lo + (a[:, j] + 1.0) * 0.5 * (hi - lo)
        out[key] = v.round().clamp(round(lo), int(hi)).long() if key == "E" else v
    return out


def batched_forward(model: nn.Module, spec: ParamSpec) -> Callable[[Tensor, Tensor], Tensor]:
    """(θ (n, d), x (n, b, ...)) ↦ logits (n, b, C): n models on n batches at once.

    Linear/ReLU/Flatten stacks (the synthetic MLP) use ``baddbmm`` directly; every other model
    goes through ``vmap(functional_call)``. Both are differentiable in θ.
    """
    layers = list(model) if isinstance(model, nn.Sequential) else []
    if layers and all(isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten)) for m in layers):
        sl = spec.slices

        def mlp(theta: Tensor, x: Tensor) -> Tensor:
            n, h = theta.shape[0], x
            for i, m in enumerate(layers):
                if isinstance(m, nn.Flatten):
                    h = h.flatten(2)
                elif isinstance(m, nn.ReLU):
                    h = torch.relu(h)
                else:
                    w = theta[:, sl[f"{i}.weight"]].view(n, m.out_features, m.in_features)
                    if m.bias is None:
                        h = torch.bmm(h, w.transpose(1, 2))
                    else:
                        bias = theta[:, sl[f"{i}.bias"]][:, None, :]
                        h = torch.baddbmm(bias, h, w.transpose(1, 2))
            return h

        return mlp
    batched = vmap(lambda th, x: functional_call(model, spec.unflatten(th), (x,)))

    def general(theta: Tensor, x: Tensor) -> Tensor:
        if theta.shape[0] == 1:                 # one model: a plain call, no vmap overhead
            return functional_call(model, spec.unflatten(theta[0]), (x[0],))[None]
        return batched(theta, x)

    return general


def row_losses(forward: Callable[[Tensor, Tensor], Tensor], theta: Tensor, x: Tensor, y: Tensor
               ) -> Tensor:
    """(n,) mean cross-entropy F(θᵢ; xᵢ, yᵢ) of each row (L2A §3's empirical loss)."""
    out = forward(theta, x)
    return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)


def _grad_of(objective: Callable[[Tensor], Tensor], theta: Tensor) -> Tensor:
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        return torch.autograd.grad(objective(th).sum(), th)[0]


def loss_grad_fn(forward: Callable[[Tensor, Tensor], Tensor]) -> GradFn:
    """Row-batched ∇θF(θᵢ; xᵢ, yᵢ) (n, d) (L2A Alg. 1's local gradients); rows are independent."""
    return lambda theta, x, y: _grad_of(lambda th: row_losses(forward, th, x, y), theta)


def cosine_objective_grad_fn(forward: Callable[[Tensor, Tensor], Tensor], theta_t: Tensor,
                             g0: Tensor, lam: Tensor) -> GradFn:
    """∇θ[(1 − λ)F(θ) + λ·cos(θ_t − θ, g₀)] per row (App. E.1, FLTrust with g₀ known)."""
    def fn(theta, x, y, rows):
        tt, g, la = theta_t[rows], g0[rows], lam[rows].to(theta)

        def objective(th):
            u = tt - th
            cos = (u * g).sum(1) / (u.norm(dim=1).clamp_min(1e-12) * g.norm(dim=1).clamp_min(1e-12))
            return (1 - la) * row_losses(forward, th, x, y) + la * cos
        return _grad_of(objective, theta)
    return fn


def root_loss_objective_grad_fn(forward: Callable[[Tensor, Tensor], Tensor],
                                root: tuple[Tensor, Tensor], lam: Tensor) -> GradFn:
    """∇θ[(1 − λ)F(θ) − λF₀(θ)] per row (App. E.1's alternate objective, root data known)."""
    x0, y0 = root

    def fn(theta, x, y, rows):
        la = lam[rows].to(theta)
        n = theta.shape[0]
        xr, yr = x0.expand(n, *x0.shape), y0.expand(n, -1)
        return _grad_of(lambda th: (1 - la) * row_losses(forward, th, x, y)
                        - la * row_losses(forward, th, xr, yr), theta)
    return fn


def ascend(grad_fn: Callable[..., Tensor], theta: Tensor, steps: Tensor, batches: Tensor,
           x: Tensor, y: Tensor, step_size: float, radius: Tensor | None = None) -> Tensor:
    """θ_E: ``steps[i]`` ascent steps from θ_t (B, d) per row, G trajectories averaged (§4.3).

    ``batches`` (B, G, E_max, B̃) indexes (x, y); rows stop after their own E (a step mask), so
    one vmapped call per step serves every row. ``radius`` (B,) projects each iterate onto
    ‖θ_t − θ‖ ≤ radius (App. E.1's FLTrust constraint). ``grad_fn(θ, x, y, rows)`` gets the row
    ids of θ's rows. Returns the mean over the G trajectories (B, d).
    """
    B, G, e_max, _ = batches.shape
    d = theta.shape[1]
    rows_of = torch.arange(B, device=theta.device).repeat_interleave(G)
    start = theta.repeat_interleave(G, 0)
    th = start.clone()
    E = steps.to(theta.device).repeat_interleave(G)
    flat = batches.reshape(B * G, e_max, -1)
    for s in range(int(E.max()) if len(E) else 0):
        act = (E > s).nonzero().squeeze(1)
        idx = flat[act, s]
        g = grad_fn(th[act], x[idx], y[idx], rows_of[act])
        new = th[act] + step_size * g
        if radius is not None:
            u = start[act] - new
            r = radius.to(theta)[rows_of[act]]
            scale = (r / u.norm(dim=1).clamp_min(1e-30)).clamp(max=1.0)
            new = start[act] - u * scale[:, None]
        th[act] = new
    return th.view(B, G, d).mean(1)


def craft_with_fallback(make: Callable[[Tensor, Tensor, Tensor], Tensor], gamma: Tensor,
                        steps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """App. E.1's NaN policy around ``make(rows, γ, E) -> (n, d)`` (rows with E ≥ 1, γ > 0).

    Rows whose update has NaN/Inf are retried with (0.5γ, E − 1); E = 0 or γ = 0 gives 0.
    Returns (updates (B, d), the γ used (B,), the E used (B,)).
    """
    gamma, steps = gamma.clone().double(), steps.clone().long()
    out: Tensor | None = None
    todo = torch.arange(len(gamma))
    while True:
        live = todo[(steps[todo] > 0) & (gamma[todo] > 0)]
        if len(live):
            upd = make(live, gamma[live], steps[live])
            if out is None:
                out = torch.zeros(len(gamma), upd.shape[1], dtype=upd.dtype, device=upd.device)
            out[live] = upd
            bad = live[~torch.isfinite(upd).all(dim=1).cpu()]
        else:
            bad = live
        if out is not None:
            dead = todo[(steps[todo] <= 0) | (gamma[todo] <= 0)]
            out[dead] = 0.0
        if len(bad) == 0:
            break
        gamma[bad] *= 0.5
        steps[bad] -= 1
        todo = bad
    return out, gamma, steps


def craft_gamma_E(grad_fn: GradFn, theta: Tensor, gamma: Tensor, steps: Tensor, batches: Tensor,
                  x: Tensor, y: Tensor, step_size: float) -> tuple[Tensor, Tensor, Tensor]:
    """§4.3's local search: γ(θ_t − θ_E) per row, with App. E.1's NaN fallback. (B, d)."""
    def make(rows, g, e):
        th_e = ascend(lambda th, xb, yb, r: grad_fn(th, xb, yb), theta[rows], e, batches[rows],
                      x, y, step_size)
        return g.to(theta)[:, None] * (theta[rows] - th_e)

    return _with_zero_default(craft_with_fallback(make, gamma, steps), theta)


def craft_E_lambda(grad_fn: GradFn, theta: Tensor, g0: Tensor, steps: Tensor, batches: Tensor,
                   x: Tensor, y: Tensor, step_size: float, constrain: bool = True
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """App. E.1 (FLTrust): γ = ‖g₀‖, upload γ(θ_t − θ_E), ‖θ_t − θ‖ ≤ ‖g₀‖ when ``constrain``.

    ``grad_fn(θ, x, y, rows)`` is the objective's gradient (:func:`cosine_objective_grad_fn` or
    :func:`root_loss_objective_grad_fn`) indexed by the rows of ``theta``. (B, d). The NaN
    fallback halves γ = ‖g₀‖ too (FLTrust rescales every upload to ‖Δ₀‖, so only E matters there).
    """
    norm = g0.norm(dim=1)

    def make(rows, g, e):
        sub = lambda th, xb, yb, r: grad_fn(th, xb, yb, rows[r])  # noqa: E731
        th_e = ascend(sub, theta[rows], e, batches[rows], x, y, step_size,
                      radius=norm[rows] if constrain else None)
        return g.to(theta)[:, None] * (theta[rows] - th_e)

    return _with_zero_default(craft_with_fallback(make, norm, steps), theta)


def craft_full(a: Tensor, scale: float, lr: float, like: Tensor) -> Tensor:
    """§4.1 for small models: the action is the crafted gradient g̃ = scale·a; upload η·g̃ (B, d)."""
    return (lr * scale) * torch.as_tensor(a, dtype=like.dtype, device=like.device).clamp(-1.0, 1.0)


def _with_zero_default(res: tuple[Tensor | None, Tensor, Tensor], theta: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
    out, g, e = res
    return (torch.zeros_like(theta) if out is None else out), g, e
