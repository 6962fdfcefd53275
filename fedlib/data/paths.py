"""Where dataset files live: the names, torchvision's layout, and the data directories searched.

Search order for the data directory (first one holding *all* of a dataset's files wins):

1. the ``root`` argument,
2. ``$FEDLIB_DATA``,
3. ``./data`` relative to the current working directory,
4. ``<repo>/data``, where ``<repo>`` is the nearest ancestor of the working directory
   that contains ``pyproject.toml`` and ``fedlib/`` (so notebooks run from
   ``notebooks/`` find ``../data``).

This module imports nothing else from :mod:`fedlib.data`: both the loaders and the
downloader depend on it, never on each other's internals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DatasetFiles", "FILE_DATASETS", "DATASETS", "canonical_name", "repo_root",
           "search_roots", "data_root", "find_file", "missing_files", "locate", "fetch_hint"]


@dataclass(frozen=True)
class DatasetFiles:
    """Where a file-backed dataset lives under a data root."""

    kind: str                       # "idx" or "cifar"
    num_classes: int
    train: tuple[str, ...]          # relative paths (IDX: images, labels), without ".gz"
    test: tuple[str, ...]
    transpose: bool = False         # EMNIST stores images transposed

    @property
    def files(self) -> tuple[str, ...]:
        """Every relative path, train first."""
        return (*self.train, *self.test)


def _idx(folder: str, prefix_train: str, prefix_test: str, num_classes: int,
         transpose: bool = False) -> DatasetFiles:
    def pair(prefix: str) -> tuple[str, str]:
        return (f"{folder}/raw/{prefix}-images-idx3-ubyte",
                f"{folder}/raw/{prefix}-labels-idx1-ubyte")
    return DatasetFiles("idx", num_classes, pair(prefix_train), pair(prefix_test), transpose)


FILE_DATASETS: dict[str, DatasetFiles] = {
    "mnist": _idx("MNIST", "train", "t10k", 10),
    "fashion-mnist": _idx("FashionMNIST", "train", "t10k", 10),
    "emnist-balanced": _idx("EMNIST", "emnist-balanced-train", "emnist-balanced-test", 47,
                            transpose=True),
    "cifar10": DatasetFiles("cifar", 10,
                            tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
                            ("cifar-10-batches-py/test_batch",)),
}
DATASETS: tuple[str, ...] = (*FILE_DATASETS, "synthetic", "digits")
_ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "emnist": "emnist-balanced", "cifar-10": "cifar10"}


def canonical_name(name: str) -> str:
    """The canonical dataset name for ``name`` (case, ``_``/``-`` and aliases folded)."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


def repo_root(start: str | os.PathLike | None = None) -> Path | None:
    """Nearest ancestor of ``start`` (default: cwd) holding ``pyproject.toml`` and ``fedlib/``."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "fedlib").is_dir():
            return d
    return None


def search_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """The data directories searched, in order: root, $FEDLIB_DATA, ./data, <repo>/data."""
    cands: list[Path] = []
    if root is not None:
        cands.append(Path(root).expanduser())
    env = os.environ.get("FEDLIB_DATA")
    if env:
        cands.append(Path(env).expanduser())
    cands.append(Path.cwd() / "data")
    repo = repo_root()
    if repo is not None:
        cands.append(repo / "data")
    out: list[Path] = []
    for c in cands:
        c = c.resolve()
        if c not in out:
            out.append(c)
    return out


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The primary data directory (where downloads go).

    ``root`` if given, else ``$FEDLIB_DATA`` if set, else the first existing of ``./data``
    and ``<repo>/data``; if neither exists, ``<repo>/data`` (or ``./data`` outside a repo).
    """
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("FEDLIB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    local = (Path.cwd() / "data").resolve()
    repo = repo_root()
    repo_data = (repo / "data").resolve() if repo is not None else None
    if local.is_dir():
        return local
    if repo_data is not None and repo_data.is_dir():
        return repo_data
    return repo_data if repo_data is not None else local


def find_file(root: Path, rel: str, kind: str) -> Path | None:
    """``root/rel`` if present (IDX files also as ``rel.gz``, the raw file preferred)."""
    candidates = [rel, rel + ".gz"] if kind == "idx" else [rel]
    for c in candidates:
        p = root / c
        if p.is_file():
            return p
    return None


def fetch_hint(name: str, dest: Path) -> str:
    """The sentence telling a user how to fetch dataset ``name`` into ``dest``."""
    return (f"Fetch them with `make data` or `python -m fedlib.data.download {name} "
            f"--root {dest}` (or call load({name!r}, download=True)).")


def _scan(name: str, root: str | os.PathLike | None
          ) -> tuple[list[Path] | None, list[str], list[Path]]:
    """(paths from the first root holding every file, or None; fewest missing; roots searched)."""
    spec = FILE_DATASETS[name]
    wanted = spec.files
    roots = search_roots(root)
    best_missing: list[str] | None = None
    for r in roots:
        found = [find_file(r, rel, spec.kind) for rel in wanted]
        missing = [rel for rel, f in zip(wanted, found) if f is None]
        if not missing:
            return [f for f in found if f is not None], [], roots
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    return None, list(best_missing if best_missing is not None else wanted), roots


def missing_files(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """Relative paths of dataset ``name`` that no searched root completes ([] if one does)."""
    key = canonical_name(name)
    if key not in FILE_DATASETS:
        return []
    suffix = "[.gz]" if FILE_DATASETS[key].kind == "idx" else ""
    return [m + suffix for m in _scan(key, root)[1]]


def locate(name: str, root: str | os.PathLike | None = None) -> tuple[list[Path], list[Path]]:
    """Train and test file paths from the first root holding all of them."""
    spec = FILE_DATASETS[name]
    paths, missing, roots = _scan(name, root)
    if paths is not None:
        return paths[:len(spec.train)], paths[len(spec.train):]
    suffix = "[.gz]" if spec.kind == "idx" else ""
    listing = ", ".join(m + suffix for m in missing)
    searched = "\n  ".join(str(r) for r in roots)
    raise FileNotFoundError(
        f"dataset {name!r}: missing files {listing}\n"
        f"searched (root argument, $FEDLIB_DATA, ./data, <repo>/data):\n  {searched}\n"
        + fetch_hint(name, data_root(root)))
