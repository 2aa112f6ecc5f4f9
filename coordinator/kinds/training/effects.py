"""What accepting a training result drawn for an audit does: open the audit; paid once it passes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from coordinator.kinds.base import PaidLater
from coordinator.repositories.results import Claimed
from coordinator.repositories.training.audits import AuditPlan, open_audit


@dataclass(frozen=True)
class OpenAudit(PaidLater):
    plan: AuditPlan
    start: Callable[[], None] | None = None  # an audit that waits on no reveal: run it once committed

    @property
    def reveal_steps(self) -> tuple[int, ...]:
        return self.plan.steps

    def committed(self) -> None:
        if self.start is not None:
            self.start()

    def apply(self, conn: Connection, claimed: Claimed, now_ms: int) -> None:
        r = claimed.receipt
        open_audit(conn, claimed.node, r.task_id, r.attempt, claimed.output, self.plan, now_ms)
