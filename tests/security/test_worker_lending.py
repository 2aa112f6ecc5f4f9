"""A node's warm worker runs the tasks of many submitters in turn: it reads the files of the
task at hand and nothing else of the node's, neither the blob cache (other jobs' programs and
inputs fetched earlier) nor the work directory (other tasks' results). Driven through the
executor the daemon gives a slot (node.agent), booting a worker that tries to read them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from node.agent import Agent
from node.config import AgentConfig
from node.executor import Executor, TaskOutcome, TaskRequest
from tensorgrid.sandbox.confine import landlock_abi
from tensorgrid.types import Capabilities, ErrorKind

PRYING = "tests.security.prying_worker"


def _daemons_executor(work: Path) -> Executor:
    """The executor the daemon gives a slot, its worker the prying one instead of node.worker."""
    ex = Agent._executor(AgentConfig(coordinator="127.0.0.1:1", work_dir=work), Capabilities("cpu", 0, 1))
    ex._entry = PRYING
    return ex


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
@pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock: file confinement is documented as missing")
def test_a_nodes_worker_reads_the_files_of_the_task_at_hand_and_no_other(tmp_path: Path) -> None:
    cache, work = tmp_path / "cache", tmp_path / "work"
    (work / "pending").mkdir(parents=True)
    cache.mkdir()
    mine, theirs = cache / ("a" * 64), cache / ("b" * 64)
    mine.write_text("this job's rows")
    theirs.write_text("another submitter's rows")
    left, kept = work / "other-1.out", work / "pending" / "other-2.out"
    left.write_text("another task's result")
    kept.write_text("a result waiting to be handed in")
    sandbox, out = work / "sandbox", work / "task-1.out"
    ex = _daemons_executor(work)
    loop = asyncio.new_event_loop()

    def run(blob: Path, time_s: float = 30.0, **settings: object) -> TaskOutcome:
        request = TaskRequest("noop", None, str(blob), str(out), settings, time_limit_s=time_s)
        return loop.run_until_complete(ex.run(request))

    def report() -> dict[str, object]:
        return dict(json.loads(out.read_text()))

    def nothing_left() -> bool:
        return not [*sandbox.glob("lent-*/*"), *sandbox.glob("out-*/*")]

    try:
        assert run(mine, pry=[str(theirs), str(left), str(kept)]).ok
        pried = dict.fromkeys([str(theirs), str(left), str(kept)], "PermissionError")
        assert report() == {"input": "this job's rows", "pried": pried}  # its output moved where the node wants it
        assert nothing_left()  # the loan taken back, its outputs' directory emptied
        pid, lent = ex.pid, str(next(sandbox.glob("lent-*")) / mine.name)

        # the next task, another submitter's, in the same warm worker: the first one's blob is gone
        assert run(theirs, pry=[str(mine), lent]).ok and ex.pid == pid
        pried = {str(mine): "PermissionError", lent: "FileNotFoundError"}
        assert report() == {"input": "another submitter's rows", "pried": pried}

        out.unlink()
        failed = run(mine, fail=True)  # a task that fails once its files were read
        assert failed.error is not None and failed.error.kind is ErrorKind.EXECUTION, failed
        assert not out.exists() and nothing_left() and ex.pid == pid

        late = run(mine, time_s=1.0, sleep=60)  # killed at its time limit
        assert late.error is not None and late.error.kind is ErrorKind.TIMEOUT, late
        assert list(sandbox.iterdir()) == []  # the killed worker's directories are gone with it
        assert mine.read_text() == "this job's rows" and theirs.exists()  # the cache's files stay

        assert run(mine).ok and ex.pid is not None  # a fresh worker, then killed from outside
        os.kill(ex.pid, signal.SIGKILL)
        assert ex._child is not None and loop.run_until_complete(ex._child.proc.wait()) == -signal.SIGKILL
    finally:
        loop.run_until_complete(ex.close())
        loop.close()
    assert list(sandbox.iterdir()) == []  # closing the executor deletes a dead worker's directories
