"""Memory at intake, shared by the kinds whose intake runs the job's program (inference's probe,
generation's first decoding, training's first inner step: kinds/training/vetting.py): a program
that already needs more than its task's memory limit there is refused before any node runs it.

The referee's warm child holds other jobs' programs and has a cap of its own, so it cannot tell
one program's memory. When the job's task_memory_limit_bytes is below that cap
(--referee-memory-mib; a limit at or over it is guarded by the cap itself: a run holding more than
1.25× such a limit maps more than the cap allows past its start-up, whenever a quarter of the cap
exceeds a child's ~300 MiB baseline, so it runs out of the cap and is refused naming cap and limit:
out_of_cap) and its tasks may run on CPU (measures_memory), intake's run goes instead to a fresh
child of its own whose peak resident memory is measured as a memory review measures a task's
(services.sandboxed, tensorgrid.sandbox.measured: VmHWM with torch loaded, reset after the
greeting, as a node's worker is measured), killed once it holds the margin a review would confirm
(ReviewSettings.over_limit, 1.25) × the limit. Past that the job is refused naming the limit and
the peak (over_memory): every CPU node's run of a task would meet the limit (the kind's intake run
is a part of a task, at the task's batch size or smaller), and a review of their claims would
confirm it. Below it the job goes on; a program small at intake's run and large on a whole task is
left to the nodes' claims and their review (repositories.limit_claims, "Over its memory limit").

Cost: one fresh child per such submission (a zygote's fork where one serves, else an interpreter
and torch). Inference's and generation's run on the referee's one thread like every probe (one at
a time); training's first step runs in plan, on a work thread. Either way each submitter holds one
of intake's validation slots while it runs (services.intake, Kind.vet_is_measured): at most
--max-validations (2) such children besides the referee's, each stopped at 1.25× a limit below
the referee's cap.
A chain submission (ValidateJob, then SubmitJob of the same spec once its escrow is funded) makes
that run once: SubmitJob takes the pass ValidateJob left (services.intake_passes: keyed by the
submitter, the spec's hash and the coordinator's settings, for a few minutes, taken once).
Where no /proc can be read, nothing is measured (logged once).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from coordinator.config import ReviewSettings
from coordinator.services.runtime import Runtime
from tensorgrid.errors import SpecError
from tensorgrid.processes import peak_rss
from tensorgrid.sandbox.measured import Measured
from tensorgrid.sandbox.oneshot import OUT_OF_MEMORY, SandboxFailure

log = logging.getLogger("tensorgrid.coordinator.intake")
MiB = 2**20
FIX = "raise task_memory_limit_bytes (and run on nodes that offer it) or make the program need less"


def measures_memory(spec: object, rt: Runtime) -> bool:
    """Whether intake measures its run of the job's program in a fresh child: a job whose tasks may
    run on CPU (a GPU node's memory is not what the referee measures) with a task memory limit
    below the referee's own cap (or no cap)."""
    limit = getattr(spec, "task_memory_limit_bytes", None)
    if not isinstance(limit, int) or getattr(spec, "device", "cpu") == "cuda":
        return False
    cap = rt.sandbox.memory_bytes
    return cap <= 0 or limit < cap


@functools.cache
def can_measure() -> bool:
    """Whether this machine lets the coordinator read a process's peak memory (Linux /proc);
    said once in the log when it cannot."""
    if peak_rss(os.getpid()) is not None:
        return True
    log.warning("no peak memory to read here (no /proc): intake's runs of programs are not measured")
    return False


def measured_run(limit: int, cap: int, what: str, run: Callable[[int], Measured]) -> Measured:
    """`run(stop_at_bytes)`: intake's run of a program (`what` it is, as the refusal names it) in a
    fresh measured child, stopped past the margin; SpecError naming the limit and the peak
    (over_memory), else what it measured (its failure, if any, is the caller's to read)."""
    m = run(int(ReviewSettings.over_limit * limit))
    refused = over_memory(limit, m, what, cap=cap)
    if refused:
        raise SpecError(refused)
    if m.failure is None:
        if not m.readable:
            log.warning("could not read the peak memory of %s: it is not measured", what)
        log.info("%s held at most %.0f MiB (its limit: %.0f MiB)", what, m.peak_bytes / MiB, limit / MiB)
    return m


def over_memory(limit: int, m: Measured, what: str, *, cap: int) -> str:
    """Why the job is refused for its intake run's measured memory ("": it is not): the run (`what`)
    held more than ReviewSettings.over_limit × the task's memory limit (so it was stopped), or ran
    out of the referee's own cap where that cap is itself past that margin (a MemoryError there)."""
    over = ReviewSettings.over_limit
    said = f"refused: the program needs more than its task_memory_limit_bytes of {limit / MiB:.0f} MiB"
    if m.stopped or m.peak_bytes > over * limit:
        how = "run in a fresh process on the coordinator's CPU and measured as a node's worker is"
        held = f"held at least {m.peak_bytes / MiB:.0f} MiB, over {over:g}× the limit"
        return f"{said}: {what}, {how}, {held}: {FIX}"
    if m.failure is not None and m.failure.kind == OUT_OF_MEMORY and cap >= over * limit:
        held = f"ran out of the coordinator's cap of {cap / MiB:.0f} MiB, over {over:g}× the limit"
        return f"{said}: {what} {held}: {FIX}"
    return ""


def out_of_cap(limit: int, cap: int, what: str, e: SandboxFailure) -> str:
    """Why a job whose intake run (`what`) ran out of the referee's memory cap is refused (with a
    limit at or over the cap the run is not measured, measures_memory: the cap is what it met)."""
    return (
        f"refused: the program ran out of the coordinator's memory cap of {cap / MiB:.0f} MiB on {what} "
        f"(its task_memory_limit_bytes is {limit / MiB:.0f} MiB): make the program need less ({e})"
    )


def refuse_failure(m: Measured, limit: int, cap: int, what: str, *, program: str, does: str) -> None:
    """SpecError for intake's measured run (`what`) that failed (nothing when it did not): out of the
    referee's cap (out_of_cap), else the `program` ("program", "train program") failed to run where
    it must `does` ("decode", "train") as a CPU node would."""
    if m.failure is None:
        return
    if m.failure.kind == OUT_OF_MEMORY and cap > 0:
        raise SpecError(out_of_cap(limit, cap, what, m.failure))
    raise SpecError(
        f"refused: the {program} failed to run on {what}, in a sandboxed process on the coordinator's "
        f"CPU (it must {does} on CPU unless the job asks for CUDA): {m.failure}"
    )
