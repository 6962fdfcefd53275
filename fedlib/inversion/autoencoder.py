"""The denoising autoencoder of L2A §4.2 / Algorithm 2 lines 2–3 (Vincent et al. 2008).

The authors built it in Keras; this is the same small convolutional network in PyTorch
(code facts): Conv(32, 3×3)–MaxPool–Conv(32)–MaxPool–Conv(32)–Up–Conv(32)–Up–Conv(C, 3×3,
sigmoid), 'same' padding, ReLU, 28,353 parameters for one channel. It is trained on the
attackers' clean images x against noisy copies clip(x + σ·N(0, 1), 0, 1) with σ = 0.3 (a
fresh noise draw every epoch), binary cross-entropy loss (the Keras tutorial's), Adam.
Image sides must be divisible by 4 (two poolings): 28×28 and 8×8 both are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DenoisingAutoencoder", "add_noise", "train_denoiser", "denoise"]


class DenoisingAutoencoder(nn.Module):
    """Conv(32)–pool–Conv(32)–pool–Conv(32)–up–Conv(32)–up–Conv(C, sigmoid) (L2A code facts)."""

    def __init__(self, channels: int = 1, hidden: int = 32):
        super().__init__()
        h = hidden
        self.net = nn.Sequential(
            nn.Conv2d(channels, h, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(h, channels, 3, padding=1),
        )

    def logits(self, x: Tensor) -> Tensor:
        """Pre-sigmoid outputs (for a numerically stable BCE loss)."""
        if x.dim() != 4 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"expected images (N, C, H, W) with H, W divisible by 4, "
                             f"got {tuple(x.shape)}")
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        """Denoised images in [0, 1]."""
        return torch.sigmoid(self.logits(x))


def add_noise(x: Tensor, sigma: float = 0.3, generator: torch.Generator | None = None) -> Tensor:
    """clip(x + σ·N(0, 1), 0, 1): L2A Algorithm 2 line 2 (σ = 0.3, appendix E.1)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return (x + sigma * noise).clamp(0.0, 1.0)


def train_denoiser(x: Tensor, *, epochs: int = 50, sigma: float = 0.3, lr: float = 1e-3,
                   batch_size: int = 32, hidden: int = 32, seed: int = 0,
                   model: DenoisingAutoencoder | None = None) -> DenoisingAutoencoder:
    """Train A_denoise on clean images x (N, C, H, W) in [0, 1] (L2A Algorithm 2 line 3)."""
    if x.dim() != 4 or len(x) == 0:
        raise ValueError(f"need a non-empty image batch (N, C, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("clean images must be finite and in [0, 1]")
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs ≥ 0, batch_size ≥ 1, lr > 0; "
                         f"got {epochs}, {batch_size}, {lr}")
    with torch.random.fork_rng(devices=[]):            # the caller's global RNG is spared
        return _train_denoiser(x, epochs, sigma, lr, batch_size, hidden, seed, model)


def _train_denoiser(x: Tensor, epochs: int, sigma: float, lr: float, batch_size: int,
                    hidden: int, seed: int, model: nn.Module | None) -> nn.Module:
    """:func:`train_denoiser`'s loop, inside a forked global RNG seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if model is None:
        model = DenoisingAutoencoder(channels=x.shape[1], hidden=hidden)
    model = model.to(x.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        noisy = add_noise(x, sigma, g)
        order = torch.randperm(len(x), generator=g).to(x.device)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss = F.binary_cross_entropy_with_logits(model.logits(noisy[idx]), x[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def denoise(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """A_denoise(x): L2A Algorithm 2 line 12 (images (N, C, H, W) in, [0, 1] images out)."""
    was = model.training
    model.eval()
    try:
        out = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out) if out else x.clone()
