"""Regenerate every figure: ``python -m fedlib.notebook_runner [--profile smoke|paper] [stem ...]``.

Each notebook in ``notebooks/`` runs with papermill. The *smoke* profile uses the defaults of
each notebook's ``parameters`` cell; the *paper* profile injects ``params/<stem>.yaml`` (a flat
mapping of parameter names to values). Executed copies go to ``figures/executed/``; a failing
notebook does not stop the others, every failure is listed at the end and the exit status is
non-zero if any failed. ``--strip`` removes outputs from the notebooks in place (for commits).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml


def repo_root() -> Path:
    """The directory holding ``pyproject.toml`` and ``notebooks/`` (searched upwards from cwd)."""
    here = Path.cwd()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").exists() and (p / "notebooks").is_dir():
            return p
    raise SystemExit("run this from inside the fedlib repository (no notebooks/ found)")


def paper_parameters(root: Path, stem: str) -> dict:
    """The paper-profile parameters of notebook ``stem`` (empty if it has none)."""
    path = root / "params" / f"{stem}.yaml"
    if not path.exists():
        return {}
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values")
    return params


def strip(path: Path) -> bool:
    """Remove outputs and execution counts from a notebook in place; True if it changed."""
    nb = json.loads(path.read_text())
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"], cell["execution_count"] = [], None
        for key in ("execution",):
            if key in cell.get("metadata", {}):
                del cell["metadata"][key]
                changed = True
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


SKIP_MARKER = "FIGURE SKIPPED:"
"""A notebook that cannot produce its figure (optional data missing) prints a line starting so."""


def skipped_reason(executed: Path) -> str | None:
    """The reason an executed notebook printed after ``SKIP_MARKER`` at a line start, else None."""
    nb = json.loads(Path(executed).read_text())
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            for line in (text if isinstance(text, str) else "".join(text)).splitlines():
                if line.startswith(SKIP_MARKER):
                    return line[len(SKIP_MARKER):].strip()
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks; return the process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stems", nargs="*", help="notebook stems to run (default: all)")
    ap.add_argument("--profile", choices=("smoke", "paper"), default="smoke")
    ap.add_argument("--strip", action="store_true", help="strip outputs in place and exit")
    args = ap.parse_args(argv)
    root = repo_root()
    books = sorted((root / "notebooks").glob("*.ipynb"))
    if args.stems:
        wanted = set(args.stems)
        books = [b for b in books if b.stem in wanted]
        missing = wanted - {b.stem for b in books}
        if missing:
            print(f"no such notebook(s): {sorted(missing)}", file=sys.stderr)
            return 2
    if args.strip:
        for b in books:
            if strip(b):
                print(f"stripped {b.relative_to(root)}")
        return 0
    import papermill as pm

    out_dir = root / "figures" / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for b in books:
        params = paper_parameters(root, b.stem) if args.profile == "paper" else {}
        start = time.perf_counter()
        print(f"[{args.profile}] {b.stem} ...", flush=True)
        try:
            pm.execute_notebook(str(b), str(out_dir / b.name), parameters=params,
                                cwd=str(b.parent), kernel_name="python3", progress_bar=False)
            why = skipped_reason(out_dir / b.name)
            if why is not None:
                skipped.append((b.stem, why))
            status = "ok" if why is None else "SKIPPED"
            print(f"    {status} in {time.perf_counter() - start:.1f} s", flush=True)
        except Exception as err:  # keep going: report every failure at the end
            msg = str(err).strip().splitlines()
            failures.append((b.stem, msg[-1] if msg else type(err).__name__))
            print(f"    FAILED after {time.perf_counter() - start:.1f} s", flush=True)
    print(f"\n{len(books) - len(failures)} of {len(books)} notebooks ran; figures in figures/")
    for stem, why in skipped:
        print(f"  SKIPPED {stem} (ran, produced no figure): {why}")
    for stem, why in failures:
        print(f"  FAILED {stem}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
