"""``load(name)``: find the raw files, parse them (cached in-process) and build datasets.

Where the files are looked for (the search order, torchvision's layout) is
:mod:`fedlib.data.paths`; fetching them is :mod:`fedlib.data.download`.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset
from .parsers import DataFormatError, read_cifar_batch, read_idx
from .paths import (DATASETS, FILE_DATASETS, DatasetFiles, canonical_name, data_root,
                    locate, repo_root, search_roots)

__all__ = ["DATASETS", "FILE_DATASETS", "load", "data_root", "search_roots", "repo_root",
           "SYNTHETIC_SEED", "SYNTHETIC_RADIUS", "SYNTHETIC_MARGIN", "DIGITS_SEED"]

SYNTHETIC_SEED = 0
SYNTHETIC_SIZES = (50_000, 5_000)
SYNTHETIC_RADIUS = math.sqrt(2.0)
SYNTHETIC_MARGIN = 1.3          # Sinha et al.: drop points with √2/1.3 < ‖x‖₂ < 1.3·√2
DIGITS_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8


# --------------------------------------------------------------------------- parsing

def _read_idx_pair(images: Path, labels: Path, num_classes: int, transpose: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, ndim=3, dtype=np.uint8)
    y = read_idx(labels, ndim=1, dtype=np.uint8)
    if len(x) != len(y):
        raise DataFormatError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    if len(y) and int(y.max()) >= num_classes:
        raise DataFormatError(f"{labels}: labels must lie in 0..{num_classes - 1}, "
                              f"found max {int(y.max())}")
    if transpose:
        x = x.transpose(0, 2, 1)
    return np.ascontiguousarray(x[:, None]), y.astype(np.int64)


def _read_split(spec: DatasetFiles, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    if spec.kind == "idx":
        return _read_idx_pair(paths[0], paths[1], spec.num_classes, spec.transpose)
    parts = [read_cifar_batch(p, num_classes=spec.num_classes) for p in paths]
    return (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))


@functools.lru_cache(maxsize=8)
def _parse_cached(name: str, key: tuple[tuple[str, int, int], ...]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images and int64 labels, cached per (files, mtimes, sizes); never handed out."""
    spec = FILE_DATASETS[name]
    paths = [Path(p) for p, _, _ in key]
    n_train = len(spec.train)
    xtr, ytr = _read_split(spec, paths[:n_train])
    xte, yte = _read_split(spec, paths[n_train:])
    return (torch.from_numpy(xtr), torch.from_numpy(ytr),
            torch.from_numpy(xte), torch.from_numpy(yte))


def _file_key(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _to_dataset(x_u8: torch.Tensor, y: torch.Tensor, num_classes: int, name: str) -> Dataset:
    """Fresh float32 tensors in [0, 1] (the cached uint8 arrays stay untouched)."""
    return Dataset(x_u8.to(torch.float32).div_(255.0), y.clone(), num_classes, name)


# --------------------------------------------------------------------------- in-memory sets

@functools.lru_cache(maxsize=1)
def _synthetic_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """L2A App. E.2 as Sinha et al. (ICLR'18): x ~ N(0, I₂), y = 1 iff ‖x‖₂ > √2, band removed.

    Points with √2/c < ‖x‖₂ < c·√2 (c = ``SYNTHETIC_MARGIN`` = 1.3) are rejected and redrawn,
    so the classes are separated by a margin and a 28-parameter MLP can reach ≈ 100 %. Class 0
    (inside) then holds (1 − e^{−1/c²}) / (1 − e^{−1/c²} + e^{−c²}) ≈ 70.8 % of the points: the
    constant predictor's accuracy, L2A's "worst-case accuracy" (68.90 % in its Figs. 9–10).
    The first 50,000 kept points are the training set, the next 5,000 the test set.
    """
    rng = np.random.default_rng(SYNTHETIC_SEED)
    n_train, n_test = SYNTHETIC_SIZES
    need = n_train + n_test
    low2 = SYNTHETIC_RADIUS ** 2 / SYNTHETIC_MARGIN ** 2          # band edges on ‖x‖², float64
    high2 = SYNTHETIC_RADIUS ** 2 * SYNTHETIC_MARGIN ** 2
    kept: list[np.ndarray] = []
    count = 0
    while count < need:                                         # ≈ 63 % of draws are kept
        x = rng.standard_normal((2 * need, 2)).astype(np.float32)
        r2 = np.square(x.astype(np.float64)).sum(1)
        x = x[(r2 <= low2) | (r2 >= high2)]
        kept.append(x)
        count += len(x)
    x = np.concatenate(kept)[:need]
    y = (np.square(x.astype(np.float64)).sum(1) > SYNTHETIC_RADIUS ** 2).astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]   # (N, 1, 8, 8) in [0, 1]
    y = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(DIGITS_SEED).permutation(len(y))
    n_train = int(round(DIGITS_TRAIN_FRACTION * len(y)))
    tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    return x[tr], y[tr], x[te], y[te]


def _from_arrays(arrays, num_classes: int, name: str) -> tuple[Dataset, Dataset]:
    xtr, ytr, xte, yte = arrays
    return (Dataset(torch.tensor(xtr), torch.tensor(ytr), num_classes, name),
            Dataset(torch.tensor(xte), torch.tensor(yte), num_classes, name))


# --------------------------------------------------------------------------- public

def load(name: str, root: str | os.PathLike | None = None, download: bool = False
         ) -> tuple[Dataset, Dataset]:
    """(train, test) of dataset ``name``; images float32 (N, C, H, W) in [0, 1], unnormalised.

    ``name``: "mnist", "fashion-mnist", "emnist-balanced", "cifar10", "synthetic", "digits".
    File-backed sets are searched for in :func:`search_roots` order; if they are missing,
    ``download=True`` fetches them into :func:`data_root` ``(root)``, otherwise a
    ``FileNotFoundError`` names the missing files, the directories searched and the
    command that fetches them. Parsed files are cached in memory per (path, mtime, size);
    every call returns fresh tensors, so callers may modify them in place.
    """
    key = canonical_name(name)
    if key == "synthetic":
        return _from_arrays(_synthetic_arrays(), 2, key)
    if key == "digits":
        return _from_arrays(_digits_arrays(), 10, key)
    try:
        train_paths, test_paths = locate(key, root)
    except FileNotFoundError:
        if not download:
            raise
        from .download import download as fetch     # one-way: download never imports loaders

        dest = data_root(root)
        fetch([key], root=dest)
        train_paths, test_paths = locate(key, dest)
    spec = FILE_DATASETS[key]
    xtr, ytr, xte, yte = _parse_cached(key, _file_key([*train_paths, *test_paths]))
    return (_to_dataset(xtr, ytr, spec.num_classes, key),
            _to_dataset(xte, yte, spec.num_classes, key))


def clear_cache() -> None:
    """Forget every parsed dataset held in memory."""
    _parse_cached.cache_clear()
