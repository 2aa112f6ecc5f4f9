"""CPU per request of each process on the serving path: what `benchmarks.serving` adds to its JSON.

On two shared cores a lone client's request waits for a core more than for any step of ours
(docs/SERVING.md, ninth pass), so the figure that says whether a change helps the tail is the
CPU a request costs each process. Each turn of a side is bracketed by a reading of
/proc/PID/stat (user + system time, all threads) of every process the benchmark started, by
role: the grid's coordinator, node agents, serving workers, the coordinator's referee (and
other sandboxed children), the baseline's server, and the client (this process). A turn's CPU
over its requests is the figure; everything a process did during the turn counts (heartbeats,
checks, receipts), as it would take a core from the request in flight.
"""

from __future__ import annotations

import os
from collections import defaultdict

from tensorgrid.processes import parent_and_cpu

__all__ = ["Meter", "roles_cpu"]

# first match wins: a sandboxed child's command line names its entry point
_ROLES = (
    ("node.serving.worker", "worker"),
    ("coordinator.services.sandbox_child", "referee"),
    ("--baseline-server", "baseline"),
    ("coordinator.main", "coordinator"),
    ("node.main", "agent"),
    ("zygote", "zygote"),
    ("sandbox.boot", "sandboxed"),  # a node's idle batch worker
)


def _role(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    return next((role for marker, role in _ROLES if marker in cmd), "other")


def roles_cpu(root: int | None = None) -> dict[int, tuple[str, float]]:
    """pid → (role, CPU seconds) of every live descendant of root (this process by default), and
    this process itself as "client"."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            got = parent_and_cpu(int(name))
            if got is not None:
                parents[int(name)], cpu[int(name)] = got
    children: dict[int, list[int]] = defaultdict(list)
    for pid, parent in parents.items():
        children[parent].append(pid)
    out = {root: ("client", cpu.get(root, 0.0))}
    todo = list(children[root])
    while todo:
        pid = todo.pop()
        out[pid] = (_role(pid), cpu[pid])
        todo.extend(children[pid])
    return out


class Meter:
    """CPU seconds by role, summed over the turns it brackets (start, stop), and their requests."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.requests = 0
        self._at: dict[int, tuple[str, float]] = {}

    def start(self) -> None:
        self._at = roles_cpu()

    def stop(self, requests: int) -> None:
        """Add what each process still alive used since start (one that died meanwhile is left out)."""
        for pid, (role, seconds) in roles_cpu().items():
            before = self._at.get(pid)
            if before is not None:
                self.seconds[role] += seconds - before[1]
        self.requests += requests

    def per_request_us(self, roles: tuple[str, ...]) -> dict[str, float]:
        """µs of CPU per request of each role in roles (and "total" of them)."""
        n = max(1, self.requests)
        out = {role: round(self.seconds.get(role, 0.0) / n * 1e6, 1) for role in roles}
        out["total"] = round(sum(out.values()), 1)
        return out
