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
from tests.integration.conftest import digits, make_grid, make_module_grid, stopper

__all__ = ["digits", "make_coordinator", "make_grid", "make_module_grid", "stopper"]


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
