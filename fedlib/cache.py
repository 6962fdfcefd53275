"""The on-disk run cache: keys, atomic writes and tolerant reads of :class:`Result` entries.

An entry lives in ``$FEDLIB_CACHE`` (or ``.cache/runs`` at the repository root) under a hash of
the canonical config, the fedlib version, the device type and, on CPU, the torch thread count.
Writes go to a temporary directory renamed into place, so a killed run leaves no corrupt entry; an
unreadable entry is recomputed. Only plain JSON and a tensor file loaded with
``torch.load(weights_only=True)`` are read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from . import __version__
from .config import RunConfig, device_of

__all__ = ["Result", "cache_dir", "config_key", "write_entry", "read_entry"]


@dataclass
class Result:
    """A finished run: its config, per-evaluation history and final global model."""

    config: dict
    history: dict
    theta: Tensor
    meta: dict

    def last(self, key: str) -> Any:
        """The last recorded value of a history entry."""
        return self.history[key][-1]

    def frame(self):
        """The scalar history entries as a pandas DataFrame indexed by round."""
        import pandas as pd
        n = len(self.history["round"])
        cols = {k: v for k, v in self.history.items()
                if len(v) == n and all(isinstance(x, (int, float)) for x in v)}
        return pd.DataFrame(cols).set_index("round")


def cache_dir() -> Path:
    """``$FEDLIB_CACHE`` or ``.cache/runs`` at the repository root (else the working dir)."""
    env = os.environ.get("FEDLIB_CACHE")
    if env:
        return Path(env)
    from .data import repo_root
    return (repo_root() or Path.cwd()) / ".cache" / "runs"


def config_key(cfg: RunConfig, threads: Optional[int] = None,
               replica_seeds: Optional[Sequence[int]] = None) -> str:
    """sha256 of the canonical config, the fedlib version, the device type, on CPU the number of
    torch threads (float reductions, hence results, depend on it; default: the current
    ``torch.get_num_threads()``) and, for a run computed as one replica of a batch, the batch's
    seeds (its numbers equal the separate run's only up to float round-off)."""
    dev = device_of(cfg.device).type
    threads = threads if threads is not None else torch.get_num_threads()
    content: dict[str, Any] = {"config": cfg.to_dict(), "version": __version__, "device": dev,
                               "threads": threads if dev == "cpu" else None}
    if replica_seeds is not None:
        content["replica_seeds"] = [int(s) for s in replica_seeds]
    blob = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def write_entry(entry: Path, result: Result) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        with open(tmp / "result.json", "w") as fh:
            json.dump({"config": result.config, "history": result.history, "meta": result.meta}, fh)
        torch.save(result.theta, tmp / "theta.pt")
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same run first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_entry(entry: Path) -> Optional[Result]:
    try:
        with open(entry / "result.json") as fh:
            blob = json.load(fh)
        theta = torch.load(entry / "theta.pt", weights_only=True, map_location="cpu")
    except FileNotFoundError:
        return None
    except Exception as err:  # corrupt entry: recompute rather than trust it
        warnings.warn(f"ignoring unreadable cache entry {entry}: {err}", RuntimeWarning,
                      stacklevel=2)
        return None
    meta = dict(blob["meta"], cached=True)
    return Result(blob["config"], blob["history"], theta, meta)


