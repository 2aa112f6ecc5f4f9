"""What each pip extra adds, and one clear line when a command needs one that is not installed.

`pip install tensorgrid` is the SDK and the `tensorgrid` command. The daemons and the chain
client need more: `tensorgrid[node]`, `tensorgrid[coordinator]`, `tensorgrid[chain]`. A daemon
started without its extra, or a command asking for the chain without [chain], stops with one
line naming the extra to install instead of an ImportError's traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.util import find_spec

from tensorgrid import exitcodes
from tensorgrid.errors import TensorGridError

# The top-level modules TensorGrid's own code imports from each extra's packages (pyproject.toml's
# [project.optional-dependencies]); tests/unit/test_packaging.py keeps the two in step.
MODULES: dict[str, tuple[str, ...]] = {
    "node": ("psutil", "prometheus_client"),
    "coordinator": (
        "sqlalchemy",
        "alembic",
        "psycopg",
        "grpc_health",
        "grpc_reflection",
        "prometheus_client",
        "aiohttp",
    ),
    "chain": ("web3", "eth_abi"),
}


class MissingExtra(TensorGridError):
    """A command needs an extra whose packages are not installed."""

    def __init__(self, extras: list[str], modules: list[str], what: str) -> None:
        names = ",".join(extras)
        label = " and ".join(f"[{e}]" for e in extras)
        plural = "s" if len(extras) > 1 else ""
        super().__init__(
            f"{what} needs the {label} extra{plural}, which is not installed (no module "
            f"{', '.join(modules)}): pip install 'tensorgrid[{names}]'"
        )
        self.extras = extras


def _absent(module: str) -> bool:
    try:
        return find_spec(module) is None
    except (ImportError, ValueError):  # a broken or half-removed install counts as absent
        return True


def require(what: str, *extras: str) -> None:
    """Raise MissingExtra naming every one of `extras` with a module missing (none imported here)."""
    missing = {extra: [m for m in MODULES[extra] if _absent(m)] for extra in extras}
    lacking = [extra for extra, modules in missing.items() if modules]
    if lacking:
        raise MissingExtra(lacking, [m for extra in lacking for m in missing[extra]], what)


def explain(error: ModuleNotFoundError, what: str) -> MissingExtra | None:
    """The MissingExtra behind an ImportError of one of the extras' modules; None for any other."""
    top = (error.name or "").split(".")[0]
    for extra, modules in MODULES.items():
        if top in modules:
            return MissingExtra([extra], [top], what)
    return None


def console(command: str, extra: str, load: Callable[[], Callable[[], int]]) -> int:
    """A daemon's console script: check its extra before importing it, then run its main;
    a missing extra (its own, or [chain] for a chain option) is one line on stderr."""
    try:
        require(command, extra)
        return load()()
    except MissingExtra as e:
        print(e, file=sys.stderr)
    except ModuleNotFoundError as e:
        missing = explain(e, command)
        if missing is None:
            raise
        print(missing, file=sys.stderr)
    return exitcodes.ERROR
