"""Where the referee's review of a task run in parts stands (services.verification.reviews): per
contested task, the training state its last part reached and what the review has cost so far.

Kept as files beside the blob store (same file system: the referee's child is lent the state as
a hard link, and its next state moves in atomically), not in the database, because a state is a
model and two optimizer moments:

    reviews/<task id>.safetensors   the training state the last part reached (written by the
                                    child; only ever read back by the child, never here)
    reviews/<task id>.json          {"spent_s", "parts", "step", "steps"}: written here, read here

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
from dataclasses import asdict, dataclass
from pathlib import Path

_STATE, _COST, _NEXT = ".safetensors", ".json", ".next.safetensors"


@dataclass(frozen=True)
class Cost:
    """What a review run in parts has cost so far, and how far it got."""

    spent_s: float = 0.0  # the referee's wall time its parts took
    parts: int = 0
    step: int = 0
    steps: int = 0


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
            return Cost(float(data["spent_s"]), int(data["parts"]), int(data["step"]), int(data["steps"]))
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
