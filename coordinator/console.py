"""The `tensorgrid-coordinator` console script: the [coordinator] extra is checked before the
daemon (SQLAlchemy, health, metrics, …) is imported."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tensorgrid.extras import console


def _daemon() -> Callable[[], int]:
    from coordinator.main import main as run

    return run


def main() -> int:
    return console("tensorgrid-coordinator", "coordinator", _daemon)


if __name__ == "__main__":
    sys.exit(main())
