"""The security suite starts real grids with the integration suite's fixtures (same processes,
same shared assets): re-exported here so pytest finds them for tests/security/. In-process
coordinators (a real referee, SQLite) come from make_coordinator, each test module saying its own
settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from tensorgrid.devnet import ChainGrid, start_chain_grid
from tests.integration.conftest import FAST, Stopper, digits, make_grid, make_module_grid, stopper

__all__ = ["digits", "make_coordinator", "make_grid", "make_module_grid", "start_devnet", "stopper"]


@pytest.fixture
def make_coordinator(tmp_path: Path) -> Iterator[Callable[..., Coordinator]]:
    """make_coordinator(**settings): a coordinator on a SQLite file under tmp_path, its config the
    defaults but `settings` (CoordinatorConfig's fields); stopped after the test, its referee's
    children with it."""
    made: list[Coordinator] = []

    def make(**settings: Any) -> Coordinator:
        where = tmp_path / f"coordinator{len(made)}"
        where.mkdir()
        config = CoordinatorConfig(data_dir=where / "data", database_url=f"sqlite:///{where / 's.db'}", **settings)
        made.append(Coordinator(config))
        return made[-1]

    yield make
    for coordinator in made:
        asyncio.run(coordinator.runtime.stop())
        coordinator.runtime.shutdown()
        coordinator.store.close()


def start_devnet(tmp_path: Path, stopper: Stopper, nodes: int, *args: str) -> Iterator[ChainGrid]:
    """A devnet (anvil, the contracts, a coordinator with `args` and its referee, `nodes` node
    daemons) for a fixture to yield; stopped after the test."""
    cg = start_chain_grid(
        tmp_path / "devnet", nodes, epoch_s=1.0, challenge_window_s=1, coordinator_args=(*FAST, *args)
    )
    try:
        yield cg
    finally:
        stopper.stop(cg)
