"""`python -m fedlib run CONFIG.yaml` or `sweep GRID.yaml`: see :mod:`fedlib.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
