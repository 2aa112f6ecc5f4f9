"""A coordinator's warm referee (its sandboxed child) shared by a module's tests: starting one
(an interpreter and torch's import) costs ~3 CPU-s, more than most tests that use it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from coordinator.services import sandboxed
from coordinator.services.runtime import Runtime
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import WarmSandbox


class CountedSandbox(WarmSandbox):
    """The referee, counting the requests made of it: a test sharing it still sees whether it
    ran anything there (as it saw a fresh runtime's referee start, or not)."""

    calls = 0

    def call(
        self,
        request: Mapping[str, Any],
        outputs: Mapping[str, os.PathLike[str] | str] | None = None,
        time_s: float | None = None,
    ) -> dict[str, Any]:
        self.calls += 1
        return super().call(request, outputs, time_s)


@dataclass
class SharedReferee:
    """A blob store and the referee that reads it (made as the coordinator makes it); a child
    a test killed or poisoned is replaced on the next call, as WarmSandbox does for the coordinator."""

    blobs: BlobStore
    sandbox: CountedSandbox

    def runtime(self) -> Runtime:
        """A fresh runtime whose referee is the shared one."""
        rt = Runtime(inline_db=True, db_threads=1)
        rt.referee = self.sandbox
        return rt


@pytest.fixture(scope="module")
def shared_referee(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedReferee]:
    blobs = BlobStore(tmp_path_factory.mktemp("referee") / "blobs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sandboxed, "WarmSandbox", CountedSandbox)
        sandbox = sandboxed.referee(Runtime(inline_db=True, db_threads=1), blobs)
    assert isinstance(sandbox, CountedSandbox)
    yield SharedReferee(blobs, sandbox)
    sandbox.close()
