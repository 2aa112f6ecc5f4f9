"""Start one task worker through tensorgrid.sandbox and wait for its greeting (node.executor's spawn).

The worker gets a scrubbed environment, its own scratch directory and the sandbox's limits
(a hard address-space cap at what the slot offers; CUDA: a per-process memory fraction);
with lend=True it reads no directory of the node's but a desk of its own (node.lending).
A worker that does not greet within the start timeout is killed: WorkerStartError.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from node.child import ChildProcess, WorkerChild
from node.lending import TaskDesk
from tensorgrid.sandbox import Isolation, SandboxLimits, Scratch, launch, scrubbed_env
from tensorgrid.sandbox.policy import child_config, report_status

__all__ = ["WorkerStartError", "spawn_worker"]

log = logging.getLogger("tensorgrid.node.executor")


class WorkerStartError(Exception):
    """The worker could not be started, or did not greet in time (stderr's tail in the message)."""


async def spawn_worker(
    entry: str,
    *,
    argv: Sequence[str] | None,
    light: bool,
    lend: bool,
    isolation: Isolation,
    scratch_root: Path | None,
    memory_cap: int,
    device: str,
    start_timeout_s: float,
    tail_bytes: int,
) -> WorkerChild:
    """A ready worker running `entry` (argv: a test's hostile worker, exec'd as given)."""
    scratch = Scratch(scratch_root, prefix="worker-")
    desk = TaskDesk(scratch_root) if lend else None
    if desk is not None:
        isolation = desk.isolation(isolation)
    cuda = device == "cuda"
    limits = SandboxLimits(
        memory_bytes=memory_cap,
        device=device,
        cuda_memory_bytes=memory_cap if cuda else 0,
        start_timeout_s=start_timeout_s,
    )
    env = scrubbed_env(scratch.path)
    try:
        if argv is not None:  # a test's hostile worker: exec'd as given
            proc: ChildProcess = await launch.async_exec(list(argv), scratch.path, env)
        else:  # forked by a zygote where one serves, else exec'd (tensorgrid.sandbox.launch)
            config = child_config(entry, limits, isolation, scratch.path)
            proc = await launch.async_popen(config, env)
    except OSError:
        scratch.close()
        if desk is not None:
            desk.close()
        raise
    child = WorkerChild(proc, tail_bytes, scratch, light, desk)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), start_timeout_s)
        hello = json.loads(line)
        if not isinstance(hello, dict) or hello.get("ready") is not True:
            raise ValueError(f"unexpected greeting {line[:200]!r}")
    except (TimeoutError, ValueError) as exc:
        await child.kill_and_wait()
        tail = await child.stderr_tail()
        raise WorkerStartError(f"the worker failed to start ({exc or 'timed out'}); stderr: {tail}") from None
    report_status(scratch.path)  # warns once where the OS keeps the worker from being isolated
    log.debug("worker %d ready", proc.pid)
    return child
