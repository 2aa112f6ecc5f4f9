"""Processes by identity (tensorgrid.processes): a pid whose start time no longer matches is
somebody else's and is never signalled; processes naming a directory are found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tensorgrid import processes


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


def test_a_process_is_its_pid_and_its_start_time(tmp_path: Path) -> None:
    child = _sleeper(str(tmp_path / "grid" / "x"))
    try:
        me = processes.identify(child.pid)
        assert me is not None and processes.alive(me)
        stranger = processes.ProcessId(child.pid, me.start + 1)  # the pid, reused by another process
        assert not processes.alive(stranger)
        assert processes.stop([stranger], timeout=0.1) == 0
        assert child.poll() is None  # never signalled
        assert processes.naming(tmp_path) == [me]
        assert processes.naming(tmp_path / "elsewhere") == []
        assert processes.stop([me], timeout=5) == 1
        assert child.wait(5) is not None and not processes.alive(me)
    finally:
        child.kill()
        child.wait()


def test_processes_just_started_are_found(tmp_path: Path) -> None:
    # Right after Popen returns, a child may still read an empty command line (the kernel lets
    # the parent go on before the new program's arguments are set up): `devnet down` must not
    # miss a coordinator restarted a moment ago. Each child is looked for at once.
    for i in range(20):
        child = _sleeper(str(tmp_path / f"grid{i}" / "x"))
        try:
            assert processes.naming(tmp_path / f"grid{i}") == [processes.identify(child.pid)]
        finally:
            child.kill()
            child.wait()
