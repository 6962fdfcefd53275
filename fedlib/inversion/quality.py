"""How good is a learned dataset? (L2A §4.2, Fig. 2; the measures of fedlib's Fig. 2 table.)

* :func:`psnr`, :func:`ssim` — image similarity of each reconstruction to a reference
  (SSIM: Wang et al. 2004, Gaussian window 11, σ = 1.5, K₁ = 0.01, K₂ = 0.03, 'valid' window
  positions, the window shrunk to the image side for small images).
* :func:`nearest` / :func:`reconstruction_quality` — each reconstruction against its nearest
  real training image (smallest squared error, i.e. highest PSNR).
* :func:`classifier_accuracy` — accuracy on the real test set of a fresh classifier trained
  only on a given (learned) dataset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import models

__all__ = ["psnr", "ssim", "nearest", "reconstruction_quality", "classifier_accuracy"]


def _check_pair(x: Tensor, ref: Tensor) -> None:
    if x.shape != ref.shape or x.dim() != 4:
        raise ValueError(f"need two image batches (N, C, H, W) of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(ref.shape)}")


def psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio 10·log₁₀(R² / MSE) of each image, in dB (N,)."""
    _check_pair(x, ref)
    mse = ((x - ref) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    r = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: Tensor, ref: Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004) of each image (N,), mean over the SSIM map."""
    _check_pair(x, ref)
    size = min(window, x.shape[-1], x.shape[-2])
    size -= (size + 1) % 2  # odd
    w = _gaussian_window(size, sigma, x.shape[1], x)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def filt(v: Tensor) -> Tensor:
        return F.conv2d(v, w, groups=x.shape[1])

    mx, my = filt(x), filt(ref)
    sxx = filt(x * x) - mx ** 2
    syy = filt(ref * ref) - my ** 2
    sxy = filt(x * ref) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def nearest(x: Tensor, pool: Tensor, batch_size: int = 4096) -> Tensor:
    """(N,) index of each x's nearest image in ``pool`` by squared error."""
    if x.dim() < 2 or pool.dim() < 2 or x.shape[1:] != pool.shape[1:] or len(pool) == 0:
        raise ValueError(f"need images of one shape and a non-empty pool, got {tuple(x.shape)} "
                         f"and {tuple(pool.shape)}")
    a = x.flatten(1)
    best = torch.full((len(a),), float("inf"), device=x.device)
    idx = torch.zeros(len(a), dtype=torch.long, device=x.device)
    for i in range(0, len(pool), batch_size):
        d = torch.cdist(a, pool[i:i + batch_size].flatten(1).to(a))
        v, j = d.min(1)
        better = v < best
        best = torch.where(better, v, best)
        idx = torch.where(better, j + i, idx)
    return idx


def reconstruction_quality(x: Tensor, pool: Tensor) -> dict[str, Tensor]:
    """PSNR and SSIM of each reconstruction against its nearest real image in ``pool``."""
    idx = nearest(x, pool)
    ref = pool[idx].to(x)
    return {"psnr": psnr(x, ref), "ssim": ssim(x, ref), "nearest": idx}


def classifier_accuracy(x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor, *,
                        model: str = "l2a-mnist", width: float = 1.0,
                        num_classes: int | None = None, epochs: int = 30, lr: float = 1e-3,
                        batch_size: int = 32, seed: int = 0) -> float:
    """Test accuracy of a fresh ``model`` trained (Adam) only on (x, y): the learned-set measure."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need a non-empty training set with matching labels, "
                         f"got {len(x)}, {len(y)}")
    C = num_classes or int(max(int(y.max()), int(y_test.max())) + 1)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        return _train_and_score(x, y, x_test, y_test, model, width, C, epochs, lr, batch_size,
                                seed)


def _train_and_score(x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor, model: str,
                     width: float, C: int, epochs: int, lr: float, batch_size: int,
                     seed: int) -> float:
    """:func:`classifier_accuracy`'s training, inside a forked global RNG seeded with ``seed``."""
    torch.manual_seed(seed)
    net = models.build(model, num_classes=C, width=width).to(x.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(x.device)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x_test[i:i + 2048]).argmax(1) for i in range(0, len(x_test), 2048)])
    return (pred == y_test.to(pred.device)).float().mean().item()
