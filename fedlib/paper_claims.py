"""A paper's qualitative claims checked on our runs: the last cell of every notebook."""

from __future__ import annotations

import dataclasses
from typing import Sequence

__all__ = ["PaperClaim", "check_claims"]


@dataclasses.dataclass
class PaperClaim:
    """One of the paper's qualitative statements, checked on our numbers."""

    paper: str
    """What the paper says (quoted or paraphrased with its figure/table)."""
    holds: bool
    """Whether our run agrees."""
    ours: str
    """What our run shows (the numbers the check used)."""
    enforce: bool = True
    """Assert it (our run is expected to support it) or only report it."""


def check_claims(claims: Sequence[PaperClaim]) -> list[str]:
    """Print every claim as "OK …" or "PAPER SAYS …, OUR RUN SHOWS …"; assert the enforced ones.

    Returns the printed lines. Raises AssertionError listing every enforced claim that fails
    (after printing all of them, so one failure never hides another).
    """
    lines, failed = [], []
    for c in claims:
        if c.holds:
            line = f"OK          {c.paper}  [ours: {c.ours}]"
        else:
            line = f"PAPER SAYS {c.paper}, OUR RUN SHOWS {c.ours}"
            if c.enforce:
                failed.append(line)
        lines.append(line)
        print(line)
    if failed:
        raise AssertionError("claims our run was expected to support failed:\n" + "\n".join(failed))
    return lines
