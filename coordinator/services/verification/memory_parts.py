"""The referee's review of a claim that a training task's program needs more than the task's memory
limit (ErrorKind.OUT_OF_MEMORY from a CPU run: repositories.limit_claims, "Over its memory limit"): the
task's inner steps as a node's worker runs them (tensorgrid.training.task: the round's weights, the
task's shard, its settings as leased), in measured parts (services.measured.measure_train_part),
each a fresh child of its own whose peak resident memory is measured as memory.py says, the
training state carried between parts in a file as the review's replay carries it (review_parts.py).

A training task's memory peaks in its first inner steps (the weights, their gradients, the
optimizer's moments, one batch's activations), so the first part is one step from the round's
weights, as a node's run starts; each part after it runs at most as many steps as ran before it
(1, 1, 2, 4, ... steps, and at most part of a referee request: PART_SHARE), so a program that grows
later is met within twice the step it grows at. A resumed part drops the state file it read once it
is restored (tensorgrid.training.inner.run_inner_for), so it holds what a node's run holds at that
step. The review's peak is the highest over its parts.

- A part's peak over `over` (1.25) × the limit (its child killed the moment it passes that), the
  program raising, or running out of the referee's cap when that cap is at least `over` × the
  limit: confirmed, final (the task ends: repositories.reviews). Its claimants are paid by the
  inner steps the referee's run did before it passed the limit (of the task's): what a node's run
  did before it met the limit. A part killed for its memory cannot answer, so its child writes the
  steps it has done to a progress file as it goes, and the measuring poller keeps the highest it
  read while the peak was still within the limit (Measured.progress; a part that raises says them
  in its error answer). The submitter's program runs in that child and may write any count there:
  it is bounded (_done, review_parts.steps_done) by the steps the parts before reached and by where
  the part was asked to stop (a count forged up pays the claimants more of the submitter's own
  escrow, at most the part's steps; one forged down pays them what the parts before proved).
- Every inner step ran, in parts whose highest peak stayed within `within` (0.5) × the limit:
  disproved. Never before the last step: a program small at first and large later is not cleared
  by its first parts.
- Anything else (a peak in between once every step ran, a part over its request's time limit, a
  crash the referee did not cause, no /proc to read, the task's review budget spent before the last
  step): undecided, other nodes settle it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.repositories.claims import CLEAN, FAILED, UNDECIDED
from coordinator.services.sandboxed import part_of
from coordinator.services.verification.review_parts import Cost, ReviewParts, steps_done
from tensorgrid.sandbox.measured import Measured
from tensorgrid.sandbox.oneshot import ERROR, OUT_OF_MEMORY

# (model sha, task settings, input file, state the part before reached or None, out, at most this many
# inner steps, the peak at which to stop the part, the peak whose passing is timed): one measured part
MeasuredPart = Callable[[str, dict[str, Any], Path, Path | None, Path, int, int, int], Measured]
Outcome = tuple[str, str, tuple[int, int], bool]  # (verdict, reason, work, final): reviews.Ruling's
MiB = 2**20


def review_part(
    run: MeasuredPart,
    progress: ReviewParts,
    task_id: str,
    model_sha: str,
    settings: dict[str, Any],
    source: Path,
    limit: int,
    *,
    over: float,
    within: float,
    cap: int,
    budget_s: float,
) -> Outcome | None:
    """The review's next measured part of the task (`progress`: where it stands); its verdict, or
    None: not yet (the part ran cleanly short of the last step, and the state it reached is kept).
    cap: the referee child's memory cap (0: none); budget_s: the referee time the review may cost."""
    cost = progress.cost(task_id)
    total = cost.steps or int((settings.get("inner") or {}).get("steps") or 0)
    said = f"its memory limit of {limit / MiB:.0f} MiB"
    if cost.spent_s >= budget_s:
        return UNDECIDED, (
            f"over its review budget: {cost.parts} measured parts took {cost.spent_s:.0f}s of the referee's "
            f"{budget_s:.0f}s and reached inner step {cost.step} of {total}, holding at most "
            f"{cost.peak / MiB:.0f} MiB of {said} so far"
        ), (0, 0), False  # fmt: skip
    state, out = progress.state(task_id), progress.next_state(task_id)
    most = max(1, cost.step)
    m = run(model_sha, settings, source, state, out, most, int(over * limit), limit)
    peak, reached = max(cost.peak, m.peak_bytes), (_done(m, cost.step, min(total, cost.step + most)), total)
    if m.stopped or m.peak_bytes > over * limit:
        held = f"its run held at least {m.peak_bytes / MiB:.0f} MiB after inner step {reached[0]}"
        return FAILED, f"its program needs more than {said} on the referee's CPU: {held}, over {over:g}× it", (
            reached
        ), True  # fmt: skip
    failure = m.failure
    if failure is not None and failure.kind == ERROR:
        return FAILED, f"{failure.kind}: {failure}"[:500], reached, True
    if failure is not None and failure.kind == OUT_OF_MEMORY and cap >= over * limit:
        why = f"its program ran out of the referee's memory cap of {cap / MiB:.0f} MiB, over {over:g}× {said}"
        return FAILED, f"{why}, after inner step {reached[0]}", reached, True
    if failure is not None:
        why = f"a measured part ended without a measure ({failure.kind}: {str(failure)[:200]})"
        return UNDECIDED, f"{why} at inner step {cost.step} of {total}", (0, 0), False
    if not m.readable or m.answer is None:
        return UNDECIDED, "the referee cannot read its run's peak memory here", (0, 0), False
    part = part_of(m.answer)
    if part.done:
        parts = f"{cost.parts + 1} measured parts"
        if peak <= within * limit:
            held = f"holding at most {peak / MiB:.0f} MiB, within {within:g}× {said}"
            return CLEAN, f"its program ran every one of its {part.steps} inner steps ({parts}) {held}", (0, 0), False
        held = f"its run held {peak / MiB:.0f} MiB"
        return UNDECIDED, f"{held}, too near {said} to tell (between {within:g}× and {over:g}× it)", (0, 0), False
    # its cost (the peak) is kept before its state: a coordinator killed between the two goes on
    # from the state before with the peak kept (its step counts from the part's answer again),
    # never from this part's state with its peak lost (small parts after it would disprove the claims)
    spent = cost.spent_s + m.wall_s
    progress.charge(task_id, Cost(spent, cost.parts + 1, part.step, part.steps, peak=peak))
    progress.advance(task_id)
    return None


def _done(m: Measured, before: int, most: int) -> int:
    """The inner steps a measured part that failed did before it failed, of those it was asked to
    run (from `before` to `most`): the step its child said it raised at (the error answer's), else
    the steps it wrote while its peak was still within the limit (Measured.progress); once past the
    limit, never more than those, as a node's run stops there. Bounded (review_parts.steps_done)."""
    raised = m.failure.details.get("step") if m.failure is not None else None
    within = m.progress
    if raised is None:
        said: object = within
    elif m.crossed_s is not None:  # it passed the limit before it raised: a node's run ends there
        said = min(raised, within) if type(raised) is int and type(within) is int else before
    else:
        said = raised
    return steps_done(said, before, most)
