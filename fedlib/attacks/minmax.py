"""Shejwalkar & Houmansadr (NDSS'21) AGR-agnostic Min-Max and Min-Sum attacks.

The crafted update is ∇_m = μ + γ·∇_p, μ the mean of the benign updates and ∇_p a
perturbation direction: "unit_vec" −μ/‖μ‖, "std" −σ (coordinate-wise std), "sign" −sign(μ).
γ is the largest value (binary search, Shejwalkar & Houmansadr Algorithm 1) such that

* Min-Max: max_i ‖∇_m − ∇_i‖ ≤ max_{i,j} ‖∇_i − ∇_j‖   (no farther from any benign update
  than the two farthest benign updates are from each other);
* Min-Sum: Σ_i ‖∇_m − ∇_i‖² ≤ max_i Σ_j ‖∇_i − ∇_j‖².

Binary search: γ ← γ_init, step ← γ_init; while |γ_succ − γ| > τ: γ ← γ ± step/2 (up if the
condition holds, recording γ_succ ← γ), step ← step/2. It explores (0, 2γ_init). Deltas are
η·gradients with η > 0, so the conditions and directions are the same on deltas.

One benign row (possible with subsampling): both bounds are 0, so no γ > 0 is admissible
along a non-zero ∇_p and every attacker sends μ, that row; "std" has σ = 0 there (a zero
∇_p), and a zero ∇_p gives γ = 0 by definition (nothing to scale).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..context import AttackContext
from .base import Attack, Stealth, reference_updates, repeat_rows

DEVIATIONS = ("unit_vec", "std", "sign")
OBJECTIVES = ("min_max", "min_sum")


def perturbation(benign: Tensor, kind: str) -> Tensor:
    """∇_p: "unit_vec" −μ/‖μ‖, "std" −σ, "sign" −sign(μ) (Shejwalkar & Houmansadr §IV).

    With one benign row "std" gives σ = 0, a zero ∇_p.
    """
    if kind not in DEVIATIONS:
        raise ValueError(f"deviation must be one of {DEVIATIONS}, got {kind!r}")
    mu = benign.mean(0)
    if kind == "unit_vec":
        return -mu / mu.norm().clamp_min(torch.finfo(mu.dtype).tiny)
    if kind == "std":                         # one row: σ = 0 (no spread to estimate)
        return -benign.std(0) if benign.shape[0] >= 2 else torch.zeros_like(mu)
    return -torch.sign(mu)


def gamma_search(benign: Tensor, direction: Tensor, objective: str, gamma_init: float = 10.0,
                 tolerance: float = 1e-5, max_iter: int = 200) -> float:
    """The largest γ with μ + γ∇_p satisfying the Min-Max / Min-Sum condition (Algorithm 1).

    ``tolerance`` is Algorithm 1's τ: the search stops once |γ − γ_succ| ≤ tolerance.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if benign.dim() != 2 or benign.shape[0] == 0:
        raise ValueError(f"benign updates must be (n ≥ 1, d), got {tuple(benign.shape)}")
    if not (gamma_init > 0 and tolerance > 0):
        raise ValueError(f"gamma_init and tolerance must be positive, got {gamma_init}, "
                         f"{tolerance}")
    if not bool(torch.isfinite(benign).all() and torch.isfinite(direction).all()):
        raise ValueError("benign updates and the direction must be finite")
    if not bool((direction != 0).any()):
        return 0.0                                 # a zero ∇_p: nothing to scale
    mu = benign.mean(0)
    pair = torch.cdist(benign, benign)
    if objective == "min_max":
        bound = pair.max()
    else:
        bound = pair.pow(2).sum(1).max()

    def ok(gamma: float) -> bool:
        dist = (benign - (mu + gamma * direction)).norm(dim=1)
        val = dist.max() if objective == "min_max" else dist.pow(2).sum()
        return bool(val <= bound)

    gamma, step, succ = float(gamma_init), float(gamma_init), 0.0
    for _ in range(max_iter):
        if abs(succ - gamma) <= tolerance:
            break
        if ok(gamma):
            succ = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return succ


class MinMax(Attack):
    """Shejwalkar & Houmansadr's AGR-agnostic Min-Max attack (all m attackers send ∇_m).

    Knowledge: full (the benign updates of the round; not the aggregation rule).
    Params: ``deviation`` ("unit_vec", "std", "sign"), ``gamma_init`` (10), ``tolerance`` (1e-5),
    stealth. ``last_gamma`` holds γ of the last call.
    """

    name = "min_max"
    knowledge = "full"
    objective = "min_max"

    def __init__(self, deviation: str = "unit_vec", gamma_init: float = 10.0,
                 tolerance: float = 1e-5, stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if deviation not in DEVIATIONS:
            raise ValueError(f"deviation must be one of {DEVIATIONS}, got {deviation!r}")
        if not (gamma_init > 0 and tolerance > 0):
            raise ValueError(f"gamma_init and tolerance must be positive, got {gamma_init}, "
                             f"{tolerance}")
        self.deviation, self.gamma_init = deviation, float(gamma_init)
        self.tolerance = float(tolerance)
        self.last_gamma: float | None = None

    def craft(self, ctx: AttackContext) -> Tensor:
        """μ + γ·∇_p with γ from the binary search."""
        benign = reference_updates(ctx)
        direction = perturbation(benign, self.deviation)
        gamma = gamma_search(benign, direction, self.objective, self.gamma_init, self.tolerance)
        self.last_gamma = gamma
        return repeat_rows(benign.mean(0) + gamma * direction, ctx.num_malicious)


class MinSum(MinMax):
    """Shejwalkar & Houmansadr's AGR-agnostic Min-Sum attack (see :class:`MinMax`)."""

    name = "min_sum"
    objective = "min_sum"
