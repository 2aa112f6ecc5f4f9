"""A coordinator's warm referee (its sandboxed child) shared by a module's tests: starting one
(an interpreter and torch's import) costs ~3 CPU-s, more than most tests that use it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator import app as coordinator_app
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.services import sandboxed
from coordinator.services.runtime import REFEREE_LIMITS, Runtime
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import SandboxLimits, WarmSandbox


class CountedSandbox(WarmSandbox):
    """The referee, counting the requests made of it: a test sharing it still sees whether it
    ran anything there (as it saw a fresh runtime's referee start, or not)."""

    calls = 0

    def call(
        self,
        request: Mapping[str, Any],
        outputs: Mapping[str, os.PathLike[str] | str] | None = None,
        time_s: float | None = None,
        inputs: Iterable[os.PathLike[str] | str] = (),
    ) -> dict[str, Any]:
        self.calls += 1
        return super().call(request, outputs, time_s, inputs)


@dataclass
class SharedReferee:
    """The referee (made as the coordinator makes it: its scratch under root, where the
    requests' files are lent to it from the blob stores under root) and a blob store under
    root; a child a test killed or poisoned is replaced on the next call, as WarmSandbox does
    for the coordinator."""

    root: Path
    blobs: BlobStore
    sandbox: CountedSandbox

    def runtime(self) -> Runtime:
        """A fresh runtime whose referee is the shared one."""
        rt = Runtime(inline_db=True, db_threads=1, sandbox=self.sandbox.limits)
        rt.referee = self.sandbox
        return rt

    def coordinator(self, db_url: str, tmp_path: Path) -> Coordinator:
        """A coordinator on its own database and data dir (one a test: a restart passes the same
        tmp_path), under root so the module's referee, which it gets, is lent its blobs as hard
        links (give the module coordinator_limits())."""
        data_dir = self.root / "coordinators" / tmp_path.name
        app = Coordinator(CoordinatorConfig(data_dir=data_dir, database_url=db_url))
        assert app.runtime.sandbox == self.sandbox.limits  # the child it would have started
        app.runtime.referee = self.sandbox
        return app


def coordinator_limits() -> SandboxLimits:
    """A default coordinator's referee limits."""
    return coordinator_app.referee_limits(CoordinatorConfig())


@pytest.fixture(scope="module")
def referee_limits() -> SandboxLimits:
    """The shared referee's limits: a bare Runtime's (a module whose runtimes differ overrides this)."""
    return REFEREE_LIMITS


@pytest.fixture(scope="module")
def shared_referee(tmp_path_factory: pytest.TempPathFactory, referee_limits: SandboxLimits) -> Iterator[SharedReferee]:
    root = tmp_path_factory.mktemp("referee")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sandboxed, "WarmSandbox", CountedSandbox)
        sandbox = sandboxed.referee(Runtime(inline_db=True, db_threads=1, sandbox=referee_limits), BlobStore(root))
    assert isinstance(sandbox, CountedSandbox)
    yield SharedReferee(root, BlobStore(root / "blobs"), sandbox)
    sandbox.close()


@pytest.fixture
def rt(shared_referee: SharedReferee) -> Runtime:
    """A runtime whose sandboxed child is the module's shared referee (intake's probes run there,
    never in this process). A module with a runtime of its own defines its own `rt`."""
    return shared_referee.runtime()


@pytest.fixture
def blobs(shared_referee: SharedReferee) -> BlobStore:
    """The store the shared referee may read (a module with a store of its own defines `blobs`)."""
    return shared_referee.blobs
