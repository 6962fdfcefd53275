"""Figure output shared by every notebook: ``figures/<notebook-stem>.png`` and ``.pdf``."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and "ipykernel" not in os.environ.get("MPLBACKEND", ""):
    matplotlib.use(os.environ.get("MPLBACKEND", "Agg") or "Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402, F401 (pyplot registers the backend)

PALETTE = {"baseline": "#444444", "mean": "#444444", "romoa": "#d62728", "rfa": "#1f77b4",
           "krum": "#2ca02c", "median": "#9467bd", "trimmed_mean": "#8c564b",
           "clipped_median": "#e377c2", "fltrust": "#17becf", "bulyan": "#bcbd22",
           "centered_clipping": "#ff7f0e", "geometric_median": "#1f77b4"}


def figures_dir() -> Path:
    """``$FEDLIB_FIGURES`` or ``figures/`` at the repository root (or the working directory)."""
    env = os.environ.get("FEDLIB_FIGURES")
    if env:
        return Path(env)
    from .data import repo_root
    return (repo_root() or Path.cwd()) / "figures"


def _atomic_savefig(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, bbox_inches="tight", dpi=150)
    os.replace(tmp, path)


def save_figure(fig, stem: str) -> list[Path]:
    """Write ``fig`` as figures/<stem>.png and figures/<stem>.pdf atomically; return the paths."""
    out = figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        _atomic_savefig(fig, p)
    return paths


def save_table(df, stem: str) -> Path:
    """Write a pandas DataFrame (or anything with ``to_csv``) as figures/<stem>.csv atomically."""
    out = figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.csv"
    tmp = path.with_name(f".{stem}.tmp.csv")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def color(name: str) -> str:
    """The house colour of a defense, so every figure uses the same one."""
    return PALETTE.get(name.lower(), "#7f7f7f")
