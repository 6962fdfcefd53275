"""L2A App. E.2's synthetic 2-D set (Sinha et al., ICLR'18): labels, margin, balance, learning."""

import math

import torch

from fedlib import data as fd
from fedlib import runs
from fedlib.data import loaders

SQRT2 = math.sqrt(2.0)


def _expected_majority() -> float:
    """P(y = 0 | kept) for x ~ N(0, I₂): ‖x‖² ~ χ²₂ = Exp(1/2), band (√2/c, c√2) removed."""
    c = loaders.SYNTHETIC_MARGIN
    inside = 1 - math.exp(-1 / c ** 2)          # P(‖x‖ ≤ √2/c) = 1 − e^{−(2/c²)/2}
    outside = math.exp(-c ** 2)                 # P(‖x‖ ≥ c√2) = e^{−2c²/2}
    return inside / (inside + outside)


def test_sizes_dtypes_and_labels_follow_the_norm_threshold():
    train, test = fd.load("synthetic")
    assert train.x.shape == (50_000, 2) and test.x.shape == (5_000, 2)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.num_classes == test.num_classes == 2
    for ds in (train, test):
        norms = ds.x.double().norm(dim=1)
        assert torch.equal(ds.y, (norms > SQRT2).long())        # y = 1 iff ‖x‖₂ > √2


def test_band_around_the_boundary_is_removed():
    train, test = fd.load("synthetic")
    assert loaders.SYNTHETIC_MARGIN == 1.3
    for ds in (train, test):
        norms = ds.x.double().norm(dim=1)
        in_band = (norms > SQRT2 / 1.3) & (norms < 1.3 * SQRT2)
        assert not in_band.any()
        # both sides of the band are populated right up to its edges
        assert norms[ds.y == 0].max() > 0.97 * SQRT2 / 1.3
        assert norms[ds.y == 1].min() < 1.03 * 1.3 * SQRT2


def test_class_balance_is_the_constant_predictor_rate():
    train, test = fd.load("synthetic")
    p = _expected_majority()                      # ≈ 0.708: L2A's "worst-case accuracy" ≈ 69 %
    assert 0.69 < p < 0.72
    assert abs((train.y == 0).double().mean().item() - p) < 0.01
    assert abs((test.y == 0).double().mean().item() - p) < 0.02
    assert abs(train.x.mean().item()) < 0.03


def test_deterministic_and_fresh_tensors():
    a, at = fd.load("synthetic")
    b, bt = fd.load("synthetic")
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(at.x, bt.x)
    a.x.add_(1.0)                                  # callers may modify what they get
    c, _ = fd.load("synthetic")
    assert torch.equal(c.x, b.x)
    assert not torch.equal(at.x, a.x[:5000] - 1.0)  # test points are not the first train points


def test_short_federated_training_reaches_high_accuracy(tmp_path, monkeypatch):
    """The margin makes the 28-parameter MLP learn the circle: ≈ 100 % (L2A's NA), here in 100
    rounds at η = 0.5 (the paper's η = 0.05 needs ≈ 700 rounds)."""
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))
    cfg = dict(dataset="synthetic", model="synthetic-mlp", num_clients=100, clients_per_round=10,
               rounds=100, lr=0.5, batch_size=128, eval_every=100, device="cpu", seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)             # a 28-parameter model: extra threads only spin
    try:
        result = runs.run(cfg, cache=False, progress=False)
    finally:
        torch.set_num_threads(before)
    start, end = result.history["test_accuracy"][0], result.last("test_accuracy")
    assert end > 0.98 and end > start + 0.2
