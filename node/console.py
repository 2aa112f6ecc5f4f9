"""The `tensorgrid-node` console script: the [node] extra is checked before the daemon is imported."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tensorgrid.extras import console


def _daemon() -> Callable[[], int]:
    from node.main import main as run

    return run


def main() -> int:
    return console("tensorgrid-node", "node", _daemon)


if __name__ == "__main__":
    sys.exit(main())
