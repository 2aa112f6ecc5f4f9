"""What a process has started, read from /proc: tests that assert which children a coordinator
or a node runs (and which it never starts)."""

from __future__ import annotations

from pathlib import Path

from coordinator.services.sandboxed import ENTRY as REFEREE_ENTRY

__all__ = ["REFEREE_ENTRY", "children", "loads_torch", "running"]


def children(pid: int) -> dict[int, list[str]]:
    """The command lines of `pid`'s live children, by process id (a child that leads its own
    session, as sandboxed children do, is still its parent's). A sandboxed child a zygote forked
    for `pid` counts as its child: its command line (tensorgrid.sandbox.zygote_child.retitle)
    ends with for=PID."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # a forked child's command line is padded with NULs (tensorgrid.sandbox.zygote_child)
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
        except OSError:  # gone meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # the name in (…) may hold spaces
        forked = argv[:1] == ["tensorgrid.sandbox.boot"] and argv[-1:] == [f"for={pid}"]
        if (int(ppid) == pid or forked) and state != "Z" and argv != [""]:
            found[int(entry.name)] = argv
    return found


def running(pid: int, module: str) -> list[int]:
    """`pid`'s live children whose command line names `module` (e.g. REFEREE_ENTRY); not a zygote
    (tests/conftest.py's names the test entries it may fork)."""
    return [
        child
        for child, argv in children(pid).items()
        if any(module in arg for arg in argv) and "tensorgrid.sandbox.zygote" not in argv
    ]


def loads_torch(pid: int) -> bool:
    """Whether process `pid` has torch's library mapped (it imported torch)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # gone
        return False
