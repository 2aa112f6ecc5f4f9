"""What accepting an inference result does: open a spot-check of it, or settle the check it answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from coordinator.db.events import append_event
from coordinator.kinds.base import PaidLater
from coordinator.repositories import results
from coordinator.repositories.results import Claimed
from coordinator.repositories.verification import checks
from coordinator.repositories.verification.checks import CheckPlan, Verdict


@dataclass(frozen=True)
class OpenCheck(PaidLater):
    """Open this spot-check of the result; it is paid once the check verifies it."""

    plan: CheckPlan
    on_commit: Callable[[], None] | None = None  # wake the drawn checker

    def apply(self, conn: Connection, claimed: Claimed, now_ms: int) -> None:
        checks.open_check(conn, results.subject_row(conn, claimed.receipt.task_id), self.plan, now_ms)

    def committed(self) -> None:
        if self.on_commit is not None:
            self.on_commit()


@dataclass(frozen=True)
class SettleCheck(PaidLater):
    """The result is a check task's: settle the check with this verdict (the grid's own cost, unpaid)."""

    verdict: Verdict
    on_commit: Callable[[], None] | None = None  # a dispute may wait for the referee
    counts_progress = False  # a check task is no task of its job (a class attribute, not a field)

    def apply(self, conn: Connection, claimed: Claimed, now_ms: int) -> None:
        checks.apply_verdict(
            conn, claimed.receipt.task_id, claimed.node, claimed.output, self.verdict, now_ms, append_event
        )

    def committed(self) -> None:
        if self.on_commit is not None:
            self.on_commit()
