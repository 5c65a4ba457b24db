"""``python bench/lab ...`` (a directory with a ``__main__``) and ``python -m bench.lab ...``."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__:
    from .cli import main

    PROG = "python -m bench.lab"
else:
    # Run as a directory: Python put this directory first on the path, where its modules would
    # shadow top-level names; import the package from its parent instead.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]
    sys.path.insert(0, str(here.parent))
    from lab.cli import main

    PROG = "python bench/lab"

if __name__ == "__main__":
    sys.exit(main(prog=PROG))
