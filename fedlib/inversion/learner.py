"""The attackers' distribution learner (L2A §4.2, Algorithm 2) as a callback of the FL engine.

``learner.on_round`` is passed to ``fedlib.runs.run(config, callbacks=[learner.on_round])``
and sees every round's :class:`fedlib.context.RoundEvent`. The attackers only see the global
model in rounds where at least one of them is sampled (``event.malicious.any()``), and then
only what the clients received, ``event.theta_shared`` (which includes the server's Laplace
noise when the run sets ``shared_noise``, L2A appendix E.2). Between two such rounds
t(τ−1) < t(τ) the learner forms ḡ (:func:`fedlib.inversion.gradient.aggregate_gradient`).
In each of the first τ_E rounds it inverts the latest ḡ into B′ dummy images (reusing the last
ḡ in rounds without an attacker; nothing before the second attacker round), denoises them
with the autoencoder trained on the attackers' m real samples, and adds them to the learned
set, which starts as those m samples.

Where ḡ is inverted — ``invert_at``: the paper writes ∇θ F_dummy(θ^{t(τ)}) (and the authors'
code inverts at θ^{t(τ)}), but ḡ is made of gradients taken at θ^{t(τ−1)} and later models,
never at θ^{t(τ)}: an off-by-one. The default ``"previous"`` inverts at θ^{t(τ−1)}, the model
the first (and, with consecutive rounds, the only) gradient in ḡ was taken at; ``"current"``
is the paper's literal reading.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..context import RoundEvent
from ..engine import Task, seed_for
from ..flat import ParamSpec
from .autoencoder import denoise, train_denoiser
from .gradient import aggregate_gradient, invert_gradient

__all__ = ["DistributionLearner", "attacker_samples", "INVERT_AT"]

INVERT_AT = ("previous", "current")


def attacker_samples(task: Task, num_attackers: int, m: int = 200, seed: int = 0
                     ) -> tuple[Tensor, Tensor]:
    """m samples drawn (seeded, without replacement) from the pooled data of clients 0..M−1."""
    if not 1 <= num_attackers <= len(task.clients):
        raise ValueError(f"num_attackers must be in [1, {len(task.clients)}], got {num_attackers}")
    pool = torch.cat([task.clients[i] for i in range(num_attackers)])
    if not 1 <= m <= len(pool):
        raise ValueError(f"m must be in [1, {len(pool)}] (the attackers' data), got {m}")
    g = torch.Generator().manual_seed(seed_for(seed, "attacker-samples", m))
    idx = pool[torch.randperm(len(pool), generator=g)[:m].to(pool.device)]
    return task.x_train[idx].clone(), task.y_train[idx].clone()


class DistributionLearner:
    """L2A Algorithm 2: the learned set D_reconstructed, grown by B′ denoised inversions per round.

    ``model`` is the FL task's model template (``fedlib.models.build(config["model"],
    width=config["width"])`` or ``runs.build_task(config).model``); (x_real, y_real) are the
    attackers' m real samples (:func:`attacker_samples`). ``rounds`` is τ_E; ``batch_size``
    (B′), ``iterations`` (max_iter), ``lr`` (η′), ``tv`` (β), ``restarts``, ``labels``,
    ``init`` and ``strategy`` go to :func:`fedlib.inversion.gradient.invert_gradient`.
    ``denoiser``: "train" (train A_denoise on x_real now, Algorithm 2 lines 2–3), a trained
    module, or None (keep the raw reconstructions).
    """

    def __init__(self, model: nn.Module, x_real: Tensor, y_real: Tensor, *, rounds: int = 100,
                 batch_size: int = 32, iterations: int = 10_000, lr: float = 0.05,
                 tv: float = 0.02, restarts: int = 1, labels: str = "soft",
                 invert_at: str = "previous", denoiser: nn.Module | str | None = "train",
                 denoiser_epochs: int = 50, denoiser_lr: float = 1e-3, noise_sigma: float = 0.3,
                 init: str = "randn", strategy: str = "auto", seed: int = 0):
        if x_real.dim() != 4 or len(x_real) != len(y_real) or len(x_real) == 0:
            raise ValueError(f"need real images (m, C, H, W) with m labels, got "
                             f"{tuple(x_real.shape)} and {tuple(y_real.shape)}")
        if invert_at not in INVERT_AT:
            raise ValueError(f"invert_at must be one of {INVERT_AT}, got {invert_at!r}")
        if rounds < 0:
            raise ValueError(f"rounds (τ_E) must be ≥ 0, got {rounds}")
        self.model, self.spec = model, ParamSpec.of(model)
        self.num_classes = int(self.spec.shapes[-1][0])
        self.x_real, self.y_real = x_real, y_real.long()
        self.rounds, self.invert_at, self.seed = rounds, invert_at, seed
        self.inversion_kw: dict[str, Any] = dict(
            batch_size=batch_size, iterations=iterations, lr=lr, tv=tv, restarts=restarts,
            labels=labels, init=init, strategy=strategy)
        if isinstance(denoiser, str):
            if denoiser != "train":
                raise ValueError(f"denoiser must be a module, None or 'train', got {denoiser!r}")
            denoiser = train_denoiser(x_real, epochs=denoiser_epochs, lr=denoiser_lr,
                                      sigma=noise_sigma, seed=seed_for(seed, "denoiser") % 2**31)
        self.denoiser = denoiser
        self.raw: list[Tensor] = []
        """Raw reconstructions, one (B′, C, H, W) batch per inverted round."""
        self.denoised: list[Tensor] = []
        """The same batches after A_denoise (equal to raw when there is no denoiser)."""
        self.label_probs: list[Tensor] = []
        """(B′, C) soft labels of each batch."""
        self.log: list[dict[str, Any]] = []
        """One row per inverted round: round, the ḡ window (t_prev, t), loss, cosine, seconds."""
        self._seen: tuple[int, Tensor] | None = None
        self._gbar: Tensor | None = None
        self._at: Tensor | None = None
        self._window: tuple[int, int] | None = None

    # ------------------------------------------------------------------ Algorithm 2 loop
    def observe(self, round: int, theta_shared: Tensor, lr: float) -> bool:
        """Record a model an attacker received in ``round``; update ḡ. True when ḡ is new.

        A model equal to the last one seen (Romoa's protocol between syncs) changes nothing.
        """
        theta_shared = theta_shared.detach()
        fresh = False
        if self._seen is not None:
            t_prev, th_prev = self._seen
            if torch.equal(th_prev, theta_shared):
                return False
            self._gbar = aggregate_gradient(th_prev, theta_shared, lr, round, t_prev)
            self._at = th_prev if self.invert_at == "previous" else theta_shared.clone()
            self._window = (t_prev, round)
            fresh = True
        self._seen = (round, theta_shared.clone())
        return fresh

    def on_round(self, event: RoundEvent) -> None:
        """The engine callback: Algorithm 2's body for FL round ``event.round`` < τ_E."""
        if event.round >= self.rounds:
            return
        fresh = False
        if bool(torch.as_tensor(event.malicious).any()):
            fresh = self.observe(event.round, event.theta_shared, event.lr)
        if self._gbar is not None and float(self._gbar.norm()) > 0:
            self.reconstruct(event.round, fresh)

    def reconstruct(self, round: int, fresh: bool = True) -> Tensor:
        """Invert the current ḡ into B′ images, denoise them and add them to the learned set."""
        if self._gbar is None or self._at is None:
            raise ValueError("no aggregate gradient yet: an attacker must be sampled twice")
        g = torch.Generator().manual_seed(seed_for(self.seed, "inversion", round))
        inv = invert_gradient(self.model, self.spec, self._at, self._gbar,
                              shape=tuple(self.x_real.shape[1:]), num_classes=self.num_classes,
                              generator=g, **self.inversion_kw)
        x = inv.x.to(self.x_real.device)
        clean = denoise(self.denoiser, x) if self.denoiser is not None else x.clone()
        self.raw.append(x)
        self.denoised.append(clean)
        self.label_probs.append(inv.label_probs.to(self.x_real.device))
        self.log.append({"round": round, "t_prev": self._window[0], "t": self._window[1],
                         "fresh_gradient": fresh, "loss": float(inv.loss[inv.best]),
                         "cosine": float(inv.cosine[inv.best]), "seconds": inv.seconds})
        return clean

    # ------------------------------------------------------------------ the learned set
    def reconstructions(self, denoised: bool = True) -> tuple[Tensor, Tensor]:
        """(x, y): every reconstruction so far (denoised or raw) with its hard label."""
        src = self.denoised if denoised else self.raw
        if not src:
            shape = (0, *self.x_real.shape[1:])
            return (self.x_real.new_zeros(shape), self.y_real.new_zeros(0))
        return torch.cat(src), torch.cat(self.label_probs).argmax(-1)

    def dataset(self, denoised: bool = True, include_real: bool = True) -> tuple[Tensor, Tensor]:
        """D_reconstructed = the m real samples ∪ the (denoised) reconstructions (Algorithm 2)."""
        x, y = self.reconstructions(denoised)
        if include_real:
            x, y = torch.cat([self.x_real, x]), torch.cat([self.y_real, y])
        return x, y

    @property
    def aggregate_gradient(self) -> Tensor | None:
        """The latest ḡ (None before an attacker was sampled twice)."""
        return self._gbar

    @property
    def inversion_point(self) -> Tensor | None:
        """The model ḡ is inverted at (θ^{t(τ−1)} or θ^{t(τ)}, see ``invert_at``)."""
        return self._at

    def __len__(self) -> int:
        """Size of the learned set (real + reconstructed)."""
        return len(self.x_real) + sum(len(b) for b in self.denoised)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Algorithm 2's state as tensors and plain data: the learned set so far, ḡ and the model
        it is inverted at, the last model seen, the log and the networks' weights (no stream to
        save: each round's inversion is seeded by (seed, round))."""
        def weights(net: nn.Module | None) -> dict[str, Tensor] | None:
            return None if net is None else {k: v.detach().clone()
                                             for k, v in net.state_dict().items()}

        return {"raw": list(self.raw), "denoised": list(self.denoised),
                "label_probs": list(self.label_probs), "log": [dict(r) for r in self.log],
                "seen": None if self._seen is None else [self._seen[0], self._seen[1]],
                "gbar": self._gbar, "at": self._at,
                "window": None if self._window is None else list(self._window),
                "model": weights(self.model), "denoiser": weights(self.denoiser)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put :meth:`state_dict` back onto a learner built with the same arguments; a learner
        built with ``denoiser=None`` gets A_denoise rebuilt from the saved weights (so that a
        restore does not train it again), without touching the global random state."""
        if state["denoiser"] is not None and self.denoiser is None:
            from .autoencoder import DenoisingAutoencoder
            first = state["denoiser"]["net.0.weight"]                 # (hidden, C, 3, 3)
            with torch.random.fork_rng(devices=[]):
                self.denoiser = DenoisingAutoencoder(channels=int(first.shape[1]),
                                                     hidden=int(first.shape[0]))
            self.denoiser.to(self.x_real.device).eval()
        if state["denoiser"] is None:
            self.denoiser = None
        else:
            self.denoiser.load_state_dict(state["denoiser"])
        self.model.load_state_dict(state["model"])
        dev = self.x_real.device
        self.raw = [t.to(dev) for t in state["raw"]]
        self.denoised = [t.to(dev) for t in state["denoised"]]
        self.label_probs = [t.to(dev) for t in state["label_probs"]]
        self.log = [dict(r) for r in state["log"]]
        seen = state["seen"]
        self._seen = None if seen is None else (int(seen[0]), seen[1].to(dev))
        self._gbar, self._at = (None if t is None else t.to(dev)
                                for t in (state["gbar"], state["at"]))
        self._window = None if state["window"] is None else tuple(state["window"])

    def stats(self) -> dict[str, float]:
        """Totals over the inverted rounds (rounds, images, seconds, mean cosine)."""
        n = len(self.log)
        return {"inverted_rounds": n, "images": sum(len(b) for b in self.raw),
                "seconds": sum(r["seconds"] for r in self.log),
                "mean_cosine": (sum(r["cosine"] for r in self.log) / n) if n else float("nan")}
