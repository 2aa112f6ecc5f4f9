"""Where the referee's review of a task run in parts stands (services.verification.reviews): per
contested task, the training state its last part reached and what the review has cost so far.

Kept as files beside the blob store (same file system: the referee's child is lent the state as
a hard link, and its next state moves in atomically), not in the database, because a state is a
model and two optimizer moments:

    reviews/<task id>.safetensors   the training state the last part reached (written by the
                                    child; only ever read back by the child, never here)
    reviews/<task id>.json          {"spent_s", "parts", "step", "steps", "size", "stalls", "low_s", ...}:
                                    written here, read here

A task reviewed in parts of rows (inference, generation) has no state file: its cost's step is
the rows run so far, and its size the rows of the next part.

A restart finds both and the review goes on from the last part's state. A crash between a part's
state moving in and its cost being written loses that part's cost (at most one request of
referee time per crash), never a state: the state file is replaced whole or not at all.
Replicas sharing the blob directory may run a part of the same review each: both states are the
same run's (a part is a function of the state before it), so the review stays sound; its cost
may then be counted once for two parts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tensorgrid.workloads import tensorfile

_STATE, _COST, _NEXT = ".safetensors", ".json", ".next.safetensors"


@dataclass(frozen=True)
class Cost:
    """What a review run in parts has cost so far, and how far it got."""

    spent_s: float = 0.0  # the referee's wall time its parts took
    parts: int = 0
    step: int = 0
    steps: int = 0
    size: int = 0  # a review in parts of rows: the next part's rows (0: the whole input at once)
    stalls: int = 0  # parts of the smallest size (one batch, one step) that timed out in a row
    # a part of rows raised: the review is confirmed whatever comes next, and its parts look for
    # the failing batch (how far the run got, for the claimants' pay): it lies in [step, fail_end)
    failed: str = ""  # what the part that raised said ("": none did)
    fail_end: int = 0
    # what the parts that ran cleanly would take on the referee's CPU with no other work on it, at
    # least and at most (Reviews._bounds: their CPU time, not their wall time, which a loaded
    # machine stretches), and at least what the last smallest part that timed out took
    low_s: float = 0.0
    high_s: float = 0.0
    stall_low_s: float = 0.0
    peak: int = 0  # a memory review in measured parts (memory_parts.py): the highest peak so far, bytes


@dataclass(frozen=True)
class RowPart:
    """The rows of a review's next request, for a kind whose rows are independent (inference,
    generation: intake's probe checked it, so the rows run in parts are the task run whole). The
    first request runs the whole input when the task's time limit fits in a part's share of a
    request; otherwise parts are sized by that limit, then by the rows a second the parts before
    ran, a quarter after a part that timed out, and always whole batches of the job's batch size
    (each batch one a node ran)."""

    first: int
    size: int  # 0: the whole input in one request
    rows: int  # the input's rows (0: not read: a whole run reads no header)
    unit: int  # the job's batch size (1: none)

    @property
    def whole(self) -> bool:
        return self.size == 0

    @property
    def smallest(self) -> bool:
        """One batch: no part of the review can be smaller."""
        return not self.whole and self.size <= self.unit

    @property
    def end(self) -> int:
        return self.first + self.size

    @classmethod
    def next(cls, cost: Cost, settings: dict[str, Any], source: Path, share_s: float, limit_s: float) -> RowPart:
        """The part after `cost`; share_s: the time a part aims at (0: requests have no limit)."""
        unit = max(1, int(settings.get("batch_size") or 0))
        if cost.parts == 0 and (share_s <= 0 or limit_s <= share_s):
            return cls(0, 0, 0, unit)
        rows = tensorfile.batch_rows(tensorfile.read_header(source))
        if cost.failed:  # looking for the failing batch: the first half of where it lies
            return cls(
                cost.step, _aligned((cost.fail_end - cost.step) / 2, unit, cost.fail_end - cost.step), rows, unit
            )
        if cost.size:
            return cls(cost.step, min(cost.size, rows - cost.step), rows, unit)
        fraction = 0.25 if cost.parts else share_s / limit_s  # after the whole input timed out: a quarter
        return cls(0, _aligned(rows * fraction, unit, rows), rows, unit)

    def after_timeout(self, retry: Cost) -> Cost:
        """Where a timeout of this part leaves the review (`retry`: its count and time): the same
        rows next, a quarter as many at a time."""
        if self.whole:
            return retry
        quarter = _aligned(self.size / 4, self.unit, self.rows - self.first)
        return replace(retry, step=self.first, steps=self.rows, size=quarter)

    def after_failure(self, cost: Cost, spent_s: float, failed: str, rows: int) -> Cost:
        """Where this part raising leaves the review (`rows`: the input's): the failing batch
        lies in its rows, so the next parts halve them (a bisection: about log2(rows / batch)
        parts, together at most those rows once more) until one batch is left (located)."""
        end = rows if self.whole else self.end
        return replace(cost, spent_s=spent_s, parts=cost.parts + 1, step=self.first, steps=rows, size=0,
                       stalls=0, failed=cost.failed or failed, fail_end=end)  # fmt: skip

    def located(self, cost: Cost) -> bool:
        """A bisection for the failing batch is down to one batch: it starts at cost.step."""
        return bool(cost.failed) and cost.fail_end - cost.step <= self.unit

    def after_clean(self, cost: Cost, spent_s: float, took_s: float, share_s: float) -> Cost:
        """Where this part, run cleanly in took_s, leaves the review: the next part as many rows
        as fit in share_s at its pace, at most four times this one."""
        if cost.failed:  # bisecting: the failing batch lies in the rest of where it was looked for
            return replace(cost, spent_s=spent_s, parts=cost.parts + 1, step=self.end, steps=self.rows, stalls=0)
        grow = 4.0 * self.size
        if share_s > 0 and took_s > 0:
            grow = min(grow, self.size / took_s * share_s)
        return Cost(spent_s, cost.parts + 1, self.end, self.rows, _aligned(grow, self.unit, self.rows - self.end))


def _aligned(rows: float, unit: int, most: int) -> int:
    """rows rounded down to whole batches of `unit`, at least one batch, at most `most`."""
    return min(most, max(unit, int(rows) // unit * unit))


class ReviewParts:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def state(self, task_id: str) -> Path | None:
        """The state the task's last part reached; None before its first."""
        path = self.root / (_checked(task_id) + _STATE)
        return path if path.exists() else None

    def next_state(self, task_id: str) -> Path:
        """Where the referee's child writes the state of the part under way (see advance)."""
        return self.root / (_checked(task_id) + _NEXT)

    def advance(self, task_id: str) -> None:
        """The part under way ended cleanly: its state is the one to go on from."""
        os.replace(self.next_state(task_id), self.root / (task_id + _STATE))

    def cost(self, task_id: str) -> Cost:
        path = self.root / (_checked(task_id) + _COST)
        try:
            data = json.loads(path.read_text())
            size = int(data.get("size", 0))  # a review a coordinator before rows in parts left has none
            stalls = int(data.get("stalls", 0))  # nor one before undecided reviews
            failed, fail_end = str(data.get("failed", "")), int(data.get("fail_end", 0))  # nor before claim pay
            low, high, stall_low = (
                float(data.get(k, 0.0)) for k in ("low_s", "high_s", "stall_low_s")
            )  # nor before time claims
            return Cost(
                float(data["spent_s"]), int(data["parts"]), int(data["step"]), int(data["steps"]), size, stalls,
                failed, fail_end, low, high, stall_low, int(data.get("peak", 0)),  # nor before measured parts
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return Cost()

    def charge(self, task_id: str, cost: Cost) -> None:
        path = self.root / (_checked(task_id) + _COST)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(cost)))
        os.replace(tmp, path)

    def drop(self, task_id: str) -> None:
        """The review ended: forget its state and cost."""
        for suffix in (_STATE, _COST, _NEXT):
            (self.root / (_checked(task_id) + suffix)).unlink(missing_ok=True)

    def sweep(self, contested: set[str]) -> None:
        """Forget the reviews of tasks no longer contested (settled, or cancelled with their
        round or job while they waited)."""
        for path in self.root.iterdir():
            task_id = path.name.split(".", 1)[0]
            if task_id not in contested:
                path.unlink(missing_ok=True)


def _checked(task_id: str) -> str:
    # task ids are hex digests; anything else must not become a path
    if not task_id or not all(c in "0123456789abcdef" for c in task_id.lower()):
        raise ValueError(f"not a task id: {task_id!r}")
    return task_id


def steps_done(reported: object, before: int, most: int) -> int:
    """The inner steps a training part that failed did, for its claimants' pay (ledger.claim_pay):
    what its child `reported` (the error answer's "step", a measured part's progress file), bounded
    by what the coordinator knows itself: at least the steps the parts `before` it reached, at most
    `most` (where the part was asked to stop: the task's steps, or before + a measured part's
    most_steps). The count comes from the referee's own code, but the submitter's program runs in
    the same child and could change it: a count above `most` is cut to it (a submitter can at most
    pay the claimants of its own failure the part's whole share of its own escrow), one below
    `before` or none at all is `before`, what the parts before proved, as before a part counted its
    steps (a submitter can at most pay its claimants that little). Never a reason to pay less."""
    if type(reported) is not int:  # not a count (none, or something a program put there): nothing more
        return before
    return max(before, min(reported, most))
