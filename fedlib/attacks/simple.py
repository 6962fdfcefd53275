"""Baseline attacks: IPM, ALIE, sign flipping, Gaussian noise and label flipping.

* **IPM** (Xie et al. UAI'19, inner product manipulation): every attacker sends
  −ε·mean(benign Δ), so ⟨aggregate, benign mean⟩ < 0 under the mean; ε = 5 as in L2A
  (L2A appendix E.1); small ε (e.g. 0.1) is Xie et al.'s choice against median-type rules.
* **ALIE** (Baruch et al. NeurIPS'19, "a little is enough"): μ − z_max·σ per coordinate,
  s = ⌊n/2 + 1⌋ − m, z_max = Φ⁻¹((n − s)/n). With a single reference update (one benign row,
  or one attacker under partial knowledge) σ = 0 and the attackers send μ, that update.
* **Sign flipping**: each attacker uploads −scale·Δ_honest (Damaskinos et al.; Li et al. RSA).
* **Gaussian noise**: N(μ, σ²I) uploads; σ² = 200 (Fang et al. §5 / Xie et al.'s Gaussian
  attack), μ = 0 or the attacker's honest update.
* **Label flipping** (data poisoning, Fang et al. §5 / Tolpegin et al.): honest local SGD on
  the attacker's data with labels l → C − 1 − l (or a given source → target map).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..context import AttackContext
from .base import Attack, Stealth, normal, own_updates, reference_updates, repeat_rows

KNOWLEDGE = ("full", "partial")


class IPM(Attack):
    """Xie et al.'s inner product manipulation: −ε · mean(benign Δ) for every attacker.

    Knowledge: full (the benign updates of the round). Params: ``epsilon`` ε (5), stealth.
    """

    name = "ipm"
    knowledge = "full"

    def __init__(self, epsilon: float = 5.0, stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(f"epsilon must be positive and finite, got {epsilon}")
        self.epsilon = float(epsilon)

    def craft(self, ctx: AttackContext) -> Tensor:
        """−ε · mean of the benign updates (Xie et al. Eq. for IPM)."""
        return repeat_rows(-self.epsilon * reference_updates(ctx).mean(0), ctx.num_malicious)


def alie_z(num_clients: int, num_malicious: int) -> float:
    """Baruch et al. z_max = Φ⁻¹((n − s)/n), s = ⌊n/2 + 1⌋ − m; p is clamped to [0.5, 1 − 1e-6]."""
    if num_clients < 1 or num_malicious < 1:
        raise ValueError(f"need n ≥ 1 clients and m ≥ 1 attackers, got {num_clients}, "
                         f"{num_malicious}")
    s = math.floor(num_clients / 2 + 1) - num_malicious
    p = min(max((num_clients - s) / num_clients, 0.5), 1 - 1e-6)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p, dtype=torch.float64)))


class ALIE(Attack):
    """Baruch et al.'s "a little is enough": μ − z·σ of the updates, for every attacker.

    Knowledge: ``knowledge="full"`` (default) estimates μ, σ from the benign updates of the
    round; "partial" from the attackers' own honest updates (Baruch's setting). Fallback: one
    reference update (one benign row; one attacker under partial knowledge) gives σ = 0, so
    the attackers send μ, that update itself. Params: ``z`` (None = z_max from n and m),
    ``knowledge``, stealth.
    """

    name = "alie"
    knowledge = "full"

    def __init__(self, z: Optional[float] = None, knowledge: str = "full", stealth: Stealth = 1.0,
                 stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if knowledge not in KNOWLEDGE:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE}, got {knowledge!r}")
        if z is not None and not math.isfinite(z):
            raise ValueError(f"z must be finite, got {z}")
        self.z, self.knowledge = z, knowledge

    def craft(self, ctx: AttackContext) -> Tensor:
        """μ − z_max·σ per coordinate (Baruch et al. Algorithm 3)."""
        ref = reference_updates(ctx) if self.knowledge == "full" else own_updates(ctx)
        mu = ref.mean(0)
        if ref.shape[0] < 2:                     # one reference update: σ = 0, send μ
            return repeat_rows(mu, ctx.num_malicious)
        z = self.z if self.z is not None else alie_z(ctx.num_clients, ctx.num_malicious)
        return repeat_rows(mu - z * ref.std(0), ctx.num_malicious)


class SignFlip(Attack):
    """Sign flipping: each attacker uploads −scale · its honest update.

    Knowledge: partial (its own update). Params: ``scale`` (1), stealth.
    """

    name = "sign_flip"

    def __init__(self, scale: float = 1.0, stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be positive and finite, got {scale}")
        self.scale = float(scale)

    def craft(self, ctx: AttackContext) -> Tensor:
        """−scale · Δ_honest."""
        return -self.scale * ctx.honest_updates


class GaussianNoise(Attack):
    """Gaussian attack: each attacker uploads an independent N(μ, σ²I) vector.

    Knowledge: none (``center="zero"``) or its own update (``center="honest"``: μ = Δ_honest).
    Params: ``std`` σ (√200, i.e. variance 200 as in Fang et al. §5), ``center``, stealth.
    """

    name = "gaussian"
    CENTERS = ("zero", "honest")

    def __init__(self, std: float = math.sqrt(200.0), center: str = "zero",
                 stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if not (std >= 0 and math.isfinite(std)):
            raise ValueError(f"std must be finite and ≥ 0, got {std}")
        if center not in self.CENTERS:
            raise ValueError(f"center must be one of {self.CENTERS}, got {center!r}")
        self.std, self.center = float(std), center

    def craft(self, ctx: AttackContext) -> Tensor:
        """μ + σ·N(0, I) per attacker, from ``ctx.generator``."""
        h = ctx.honest_updates
        noise = self.std * normal(h.shape, ctx.generator, h)
        return noise + h if self.center == "honest" else noise


class LabelFlip(Attack):
    """Label flipping (data poisoning): honest local SGD on relabelled attacker data.

    Knowledge: partial (its own data). Each of the m attackers trains independently from
    θ_ref for the round's local steps on minibatches of the pooled attacker data with labels
    mapped by ``mapping``: "reverse" (l → C − 1 − l, Fang et al. §5) or a dict
    {source: target} (other labels unchanged). Params: ``mapping``, ``num_classes`` (None:
    from the task in ``prepare`` or from the model's output), stealth.
    """

    name = "label_flip"

    def __init__(self, mapping: Union[str, dict] = "reverse", num_classes: Optional[int] = None,
                 stealth: Stealth = 1.0, stealth_base: str = "honest"):
        super().__init__(stealth, stealth_base)
        if isinstance(mapping, dict):
            mapping = {int(k): int(v) for k, v in mapping.items()}
            if not mapping:
                raise ValueError("mapping dict must not be empty")
        elif mapping != "reverse":
            raise ValueError(f"mapping must be 'reverse' or a dict, got {mapping!r}")
        self.mapping, self.num_classes = mapping, num_classes

    def prepare(self, task) -> None:
        """Remember the number of classes C."""
        self.num_classes = self.num_classes or int(task.num_classes)

    def flip(self, y: Tensor, num_classes: int) -> Tensor:
        """The poisoned labels."""
        if self.mapping == "reverse":
            return num_classes - 1 - y
        lut = torch.arange(num_classes, device=y.device)
        for s, t in self.mapping.items():
            if not (0 <= s < num_classes and 0 <= t < num_classes):
                raise ValueError(f"label map {s} → {t} outside 0..{num_classes - 1}")
            lut[s] = t
        return lut[y]

    def craft(self, ctx: AttackContext) -> Tensor:
        """θ_ref − θ_i for each attacker i after local SGD on flipped labels."""
        x, y = ctx.data
        if len(y) == 0:
            raise ValueError("label flipping needs the attackers' local data, which is empty")
        c = self.num_classes or int(ctx.forward(ctx.theta, x[:1]).shape[-1])
        yf = self.flip(y, c)
        rows = [ctx.theta - ctx.train(ctx.theta, x, yf, ctx.local_steps, ctx.lr, ctx.batch_size)
                for _ in range(ctx.num_malicious)]
        return torch.stack(rows)
