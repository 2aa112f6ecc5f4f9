"""A test run that is killed (a shell's timeout, SIGKILL, a cancelled CI job) leaves nothing
running: what its helpers started ends by itself, within a bound."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tensorgrid.processes import ProcessId, alive, identify
from tensorgrid.sandbox import launch

pytestmark = pytest.mark.integration

START_S = 90.0  # the starter's grid up and its children found, on a loaded machine
GONE_S = 15.0  # the bound: the owner watch's SIGTERM, a shutdown, and its SIGKILL fallback (10 s)


@contextlib.contextmanager
def starter(root: Path) -> Iterator[subprocess.Popen[str]]:
    """tests/integration/grid_starter.py running; SIGKILLed (with whatever it started, by pid,
    if the test failed) when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.grid_starter", str(root)],
        stdout=subprocess.PIPE,
        stderr=open(root / "starter.log", "w"),  # noqa: SIM115 -- the child holds it
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def started(proc: subprocess.Popen[str], root: Path) -> tuple[dict[str, list[ProcessId]], Path]:
    """The process ids the starter printed, each with its start time (a pid reused meanwhile is
    never taken for ours), and anvil's directory."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_S)
    line = proc.stdout.readline() if ready else ""
    assert line, f"the starter printed nothing in {START_S} s:\n{(root / 'starter.log').read_text()[-3000:]}"
    said = json.loads(line)
    ours = {what: [p for pid in pids if (p := identify(pid)) is not None] for what, pids in said["pids"].items()}
    return ours, Path(said["anvil_dir"])


def test_what_a_killed_test_started_ends_by_itself(tmp_path: Path, sandbox_zygote: str) -> None:
    if sandbox_zygote.lower() not in launch.OFF:
        assert launch.wait_ready(sandbox_zygote, 120), "the session's zygote never answered"
    with starter(tmp_path) as proc:
        ours, anvil_dir = started(proc, tmp_path)
        assert ours["coordinator"] and ours["referee"] and ours["node"] and ours["anvil"], ours
        try:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + GONE_S
            left = ours
            while time.monotonic() < deadline:
                left = {what: [p for p in ps if alive(p)] for what, ps in ours.items()}
                if not any(left.values()):
                    break
                time.sleep(0.2)
            assert not any(left.values()), f"still running {GONE_S} s after the test run was killed: {left}"
            assert not anvil_dir.exists(), f"anvil's {anvil_dir} left behind"
        finally:
            for p in (p for ps in ours.values() for p in ps):
                if alive(p):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)
            shutil.rmtree(anvil_dir, ignore_errors=True)  # should the test fail


# A daemon's own zygote (--sandbox-zygote auto), as any process of ours starts it.
OWN_ZYGOTE = (
    "import sys, time; from tensorgrid.sandbox import launch; launch.configure('auto'); "
    "path = launch._choice.socket(); print(path, flush=True); "
    "print('warm' if launch.wait_ready(path, 120) else 'cold', flush=True); time.sleep(600)"
)


@pytest.mark.parametrize("end", ["SIGTERM", "SIGKILL"])
def test_the_directory_of_a_process_own_zygote_goes_with_it(tmp_path: Path, end: str) -> None:
    """Each process that starts its own zygote makes a tg-zygote-* directory for its socket: gone
    once the process and its zygote have ended, however the process ended."""
    proc = subprocess.Popen(
        [sys.executable, "-c", OWN_ZYGOTE], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    try:
        assert proc.stdout is not None
        where = Path(proc.stdout.readline().strip()).parent
        assert where.name.startswith("tg-zygote-") and where.is_dir()
        assert proc.stdout.readline().strip() == "warm"
        proc.send_signal(getattr(signal, end))
        proc.wait()
        deadline = time.monotonic() + GONE_S
        while where.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not where.exists(), f"{where} left behind: {os.listdir(where)}"
    finally:
        proc.kill()
        proc.wait()
