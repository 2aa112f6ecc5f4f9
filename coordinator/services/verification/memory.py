"""The referee's review of a claim that a task's program needs more memory than the task's limit
(ErrorKind.OUT_OF_MEMORY from a CPU run, or from a CUDA run of a job that runs anywhere, whose
verdict is the same but for a clean run: undecided for it, repositories.limit_claims, "Over its
memory limit", "... from a CUDA run"): one measured run of the whole task here (inference,
generation); a training task's in parts (memory_parts.py).

What a node compares with the limit (node.executor): the peak resident memory (VmHWM) of its
whole worker process, torch loaded, over the task's run at the job's batch size, reset before the
task; a worker that held other jobs' programs when it met the limit runs the task again in a
fresh one before it reports, so a report is about a fresh worker. Behind that, an address-space
backstop (node.worker: RLIMIT_AS at what the worker mapped + the limit + ADDRESS_SPACE_HEADROOM)
turns an allocation past it into a clean MemoryError, also reported as out of memory.

The referee measures the same quantity the same way (tensorgrid.sandbox.measured): the task's
rows at its batch size, in a fresh child of its own (not its warm child, which holds other jobs'
programs), its VmHWM reset once it greeted, polled while it runs and read after it answered. It
runs the same code (tensorgrid.workloads.inference.run_inference; a generation task's decoding
loop, tensorgrid.workloads.generation.run_generation: kinds.generation.replay.measure_decoding; a
check task as its job's tasks run, by its settings' task kind: verification.runs.KindRuns.measure);
the two baselines differ by a few tens of MiB (measured here: a fresh child ran a small program at a
peak of 285 MiB; a worker holds ~310 MiB with torch imported), far inside the margins below for any
limit a worker can meet.

- Peak over `over` (1.25) × the limit (the child is killed the moment it passes that, so the
  referee holds no more): confirmed, final, the job fails naming the memory limit. The claimants
  are paid as for a time claim, by a draw for the share of the task their runs did: the referee's
  time until its run first held more than the limit, at least (its CPU time over its threads, as
  reviews._bounds), over the task's time limit (a run of the whole task takes at most that).
- The program ran out of the referee's own address space (a MemoryError under its cap): confirmed
  as above only when that cap leaves the program at least `over` × the limit, so it grew past
  what a node's backstop allows for the limit by that margin; under a smaller cap it says nothing
  of the task (undecided).
- A clean run whose peak stayed within `within` (0.5) × the limit: disproved.
- The program raised (not out of memory): confirmed, final, as any review's raise.
- Anything else (a peak in between, a crash the referee did not cause, its request's time limit,
  no /proc to read): undecided, other nodes settle it.

Training tasks are covered too, in parts: memory_parts.py measures a training task's inner steps from
the round's weights in fresh children of 1, 1, 2, 4, ... steps, the state carried between them, with
the same margins; it confirms as above (the task ends alone, its claimants paid by the inner steps
reached before the part that passed the limit), disproves only once every step ran, and is undecided
when its review budget ends first. What remains: a measure of one whole run for a kind whose task
is longer than one referee request (inference, generation) is undecided past the request's time
limit, not run in parts; a noop task's report stays its node's own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.repositories.claims import CLEAN, FAILED, UNDECIDED
from tensorgrid.sandbox.measured import Measured
from tensorgrid.sandbox.oneshot import ERROR, OUT_OF_MEMORY

# (model sha, task settings, input file, the peak at which to stop the run, the peak whose passing
# is timed): its measured run (services.measured.measure_rows; a training task's parts: memory_parts.py)
Measure = Callable[[str, dict[str, Any], Path, int, int], Measured]
MiB = 2**20


def memory_verdict(
    m: Measured, limit: int, *, over: float, within: float, cap: int, rows: int, time_limit_s: float, threads: int
) -> tuple[str, str, tuple[int, int], bool]:
    """(outcome, reason, work, final) of a memory review whose run `m` measured, against the task's
    limit in bytes; cap: the referee child's own memory cap (SandboxLimits.memory_bytes, 0: none),
    rows: the task's, threads: the most the child runs at once (its CPU time over them bounds a run's
    time from below)."""
    said = f"its memory limit of {limit / MiB:.0f} MiB"
    if m.stopped or m.peak_bytes > over * limit:
        work = (_reached(m, rows, time_limit_s, threads), rows)
        held = f"held at least {m.peak_bytes / MiB:.0f} MiB, over {over:g}×"
        return FAILED, f"its program needs more than {said} on the referee's CPU: its run {held} the limit", work, True
    failure = m.failure
    if failure is not None and failure.kind == ERROR:
        return FAILED, f"{failure.kind}: {failure}"[:500], (0, rows), True
    if failure is not None and failure.kind == OUT_OF_MEMORY and cap >= over * limit:
        why = f"its program ran out of the referee's memory cap of {cap / MiB:.0f} MiB, over {over:g}× {said}"
        return FAILED, why, (_reached(m, rows, time_limit_s, threads), rows), True
    if failure is None and m.readable and m.peak_bytes <= within * limit:
        held = f"holding at most {m.peak_bytes / MiB:.0f} MiB, within {within:g}× {said}"
        return CLEAN, f"its program ran over the whole input {held}", (0, 0), False
    if failure is not None:
        why = f"the referee's measured run ended without a measure ({failure.kind}: {str(failure)[:200]})"
    elif not m.readable:
        why = "the referee cannot read its run's peak memory here"
    else:
        held = f"its run held {m.peak_bytes / MiB:.0f} MiB"
        why = f"{held}, too near {said} to tell (between {within:g}× and {over:g}× it)"
    return UNDECIDED, why, (0, 0), False


def _reached(m: Measured, rows: int, time_limit_s: float, threads: int) -> int:
    """The share of the task's rows a node's run did before it met the limit, at most: the
    referee's time until its run held more than the limit (at least: its CPU time over its
    threads, scaled to that moment) over the task's time limit (a whole run takes at most that)."""
    if time_limit_s <= 0 or m.wall_s <= 0:
        return 0
    low = m.wall_s if m.cpu_s is None else min(m.wall_s, m.cpu_s / max(1, threads))
    until = low * min(1.0, m.crossed_s / m.wall_s) if m.crossed_s is not None else low
    return min(rows, int(rows * until / time_limit_s))
