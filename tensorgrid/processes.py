"""Processes known by identity, not by pid alone: what the devnet supervisor starts and stops.

A pid is reused once its process is gone, so a pid written down yesterday may name a stranger's
process today. A process here is its pid and its start time (clock ticks after boot, field 22 of
/proc/<pid>/stat): a signal goes only to a process whose start time still matches. Processes a
supervisor did not start itself (a coordinator the operator restarted by hand) are found by
their command line naming a directory the supervisor owns.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
EXEC_SETTLE_S = 0.05  # how long a process mid-exec may read an empty command line (see naming)


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start: int  # clock ticks after boot; 0 where there is no /proc (then the pid alone is used)

    def to_dict(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ProcessId:
        return cls(int(d["pid"]), int(d.get("start", 0)))


def cpu_cores() -> int:
    """Cores this process may run on (honors taskset/cgroup affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, all its threads (Linux /proc); None where unavailable."""
    got = parent_and_cpu(pid)
    return None if got is None else got[1]


def parent_and_cpu(pid: int) -> tuple[int, float] | None:
    """(parent pid, cpu_seconds) of a process, from one read of its /proc stat; None where unavailable."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int | None:
    """Peak resident memory of a process since its start or its last reset_peak (VmHWM, in
    bytes): the quantity a node compares with a task's memory limit (node.executor); None where
    unavailable (not Linux, no such process)."""
    try:  # raw bytes, one read
        with open(PROC / str(pid) / "status", "rb", buffering=0) as f:
            status = f.read(16384)
        at = status.index(b"VmHWM:") + 6
        return int(status[at : status.index(b"kB", at)]) * 1024
    except (OSError, ValueError):
        return None


def reset_peak(pid: int) -> bool:
    """Restart a process's VmHWM from its current RSS (Linux: "5" to /proc/<pid>/clear_refs);
    whether it could."""
    try:
        with open(PROC / str(pid) / "clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def start_time(pid: int) -> int | None:
    """The start time of pid, or None if there is no such process (or it is a zombie)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        if not PROC.is_dir():  # no /proc: fall back to the pid alone
            return 0 if exists(pid) else None
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    if fields[0] == "Z":
        return None
    return int(fields[19])


def identify(pid: int) -> ProcessId | None:
    start = start_time(pid)
    return None if start is None else ProcessId(pid, start)


def alive(p: ProcessId) -> bool:
    """Whether p's process still runs: same pid and the same start time."""
    return start_time(p.pid) == p.start if p.start else start_time(p.pid) is not None


def naming(directory: Path) -> list[ProcessId]:
    """This user's processes with an argument under `directory` (an absolute path), other than
    this process and its parent.

    A process in the middle of exec reads an empty command line for a moment: the kernel lets
    its parent go on (the exec has succeeded) before it has set the new arguments up (seen in
    3-5% of reads right after subprocess.Popen returned, on a busy machine). Processes that read
    empty are read once more after EXEC_SETTLE_S, so a coordinator just restarted is not missed."""
    prefix = str(directory) + os.sep
    me = {os.getpid(), os.getppid()}
    found, empty = _naming(prefix, (e for e in PROC.glob("[0-9]*") if e.name.isdigit()), me)
    if empty:
        time.sleep(EXEC_SETTLE_S)
        found += _naming(prefix, (PROC / str(pid) for pid in empty), me)[0]
    return found


def _naming(prefix: str, entries: Iterable[Path], skip: set[int]) -> tuple[list[ProcessId], list[int]]:
    """Of these /proc entries, the processes with an argument under prefix, and the pids whose
    command line read empty (kernel threads, zombies, a process mid-exec)."""
    found, empty = [], []
    for entry in entries:
        try:
            pid = int(entry.name)
            if pid in skip or entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if not cmdline:
            empty.append(pid)
        elif any(a.decode(errors="replace").startswith(prefix) for a in cmdline.split(b"\0")):
            p = identify(pid)
            if p is not None:
                found.append(p)
    return found, empty


def stop(procs: list[ProcessId], timeout: float = 15.0) -> int:
    """SIGTERM each process still alive, then SIGKILL what is left after `timeout` s (each
    signal only to a process whose identity still matches). Returns how many were running."""
    running = [p for p in procs if alive(p)]
    for p in running:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in running:
        _signal(p, signal.SIGKILL)
    return len(running)


def _signal(p: ProcessId, sig: int) -> None:
    if not alive(p):
        return
    try:
        os.kill(p.pid, sig)
    except ProcessLookupError:
        pass
    try:  # reap a child of ours, so it does not linger as a zombie
        os.waitpid(p.pid, os.WNOHANG)
    except ChildProcessError:
        pass


def exists(pid: int) -> bool:
    """Whether a process with this id runs (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
