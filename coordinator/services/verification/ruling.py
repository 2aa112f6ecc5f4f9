"""A review's verdict (Ruling), and the review's memory path: the referee's measured run of a task
whose claims say its program needs more than the task's memory limit (reviews.Reviews calls these:
the whole task in one measured run, memory.py; a training task in measured parts, memory_parts.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from coordinator.repositories.claims import UNDECIDED
from coordinator.repositories.reviews import Contested
from coordinator.services.runtime import Runtime
from coordinator.services.verification.memory import Measure, memory_verdict
from coordinator.services.verification.memory_parts import MeasuredPart, review_part
from coordinator.services.verification.review_parts import ReviewParts


class Ruling(NamedTuple):
    """A review's verdict: claims.CLEAN, FAILED or UNDECIDED, and what happened."""

    outcome: str
    reason: str
    # FAILED: how far the run got before it failed, of the task's work (rows before the failing
    # batch, or inner steps, of the task's): what its claimants are paid for (ledger.claim_pay)
    work: tuple[int, int] = (0, 0)
    # FAILED: the program (or its input) raised, not a limit of the referee's child, a crash or a
    # missing blob: the input itself fails, on any node, so the task ends at once (settle_review)
    final: bool = False


Verdict = Ruling | None  # None: not yet


def measured_whole(
    rt: Runtime, measure: Measure, task: Contested, source: Path, over: float, within: float, rows: int, threads: int
) -> Verdict:
    """A claim that the program needs more than the task's memory limit: one measured run of the
    whole task in a fresh child (memory.py), stopped once it holds `over` × the limit. rows: the
    task's input's; threads: those a fresh child of the referee's limits may use at once."""
    limit = task.memory_limit_bytes
    try:
        settings = json.loads(task.settings)
        measured = measure(task.model_sha, settings, source, int(over * limit), limit)
    except Exception as e:  # noqa: BLE001 - a run that could not be measured decides nothing
        if rt.stopping:
            return None
        return Ruling(UNDECIDED, f"the referee could not measure its run: {type(e).__name__}: {e}"[:500])
    if rt.stopping and measured.failure is not None:
        return None  # cut short by the coordinator stopping: no verdict
    outcome, reason, work, final = memory_verdict(
        measured, limit, over=over, within=within, cap=rt.sandbox.memory_bytes,
        rows=rows, time_limit_s=task.time_limit_ms / 1000, threads=threads,
    )  # fmt: skip
    return Ruling(outcome, reason, work, final)


def measured_parts(
    rt: Runtime,
    run: MeasuredPart,
    progress: ReviewParts,
    task: Contested,
    source: Path,
    over: float,
    within: float,
    budget_s: float,
) -> Verdict:
    """The same claim on a task measured in parts (training), one part a turn (memory_parts.py)."""
    limit, cap = task.memory_limit_bytes, rt.sandbox.memory_bytes
    try:
        settings = json.loads(task.settings)
        outcome = review_part(
            run, progress, task.task_id, task.model_sha, settings, source, limit,
            over=over, within=within, cap=cap, budget_s=budget_s,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - a run that could not be measured decides nothing
        outcome = UNDECIDED, f"the referee could not measure its run: {type(e).__name__}: {e}"[:500], (0, 0), False
    # cut short by the coordinator stopping: no verdict (the part the last one reached is kept)
    return None if outcome is None or rt.stopping else Ruling(*outcome)
