"""Auditing training results at run time: draw, collect reveals, replay, settle.

When a training result is accepted, the job's verification policy draws whether to audit it
(new nodes always, trusted ones down to the floor) and which segment of its checkpoint
chain to replay; both come from an HMAC of a coordinator secret, so a node cannot predict
them. The node then reveals the checkpoints asked for (RevealCheckpoint); once all are in,
the coordinator checks them on its work pool (coordinator.training.replay) and settles the
audit. The round manager calls settle_round before closing a round: audits whose reveals
are all in are checked there too (e.g. after a restart) and the rest expire at the round's
deadline, so a round never closes on a result whose audit is still open.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from coordinator.api.blobs import receive_into
from coordinator.errors import Rejected
from coordinator.storage import TaskRecord
from coordinator.training import audit_store as db
from coordinator.training.audit_store import EXPIRED, FAILED, PASSED, PENDING, Audit, AuditPlan, Outcome
from coordinator.training.replay import AuditCase, check_reveal, reveal_plan
from coordinator.training.store import RoundView, round_view, task_settings
from coordinator.verification.policy import DEFAULT, VerificationPolicy
from tensorgrid.training.commitments import checkpoint_steps
from tensorgrid.training.inner import InnerSettings
from tensorgrid.types import BlobRef

if TYPE_CHECKING:
    from coordinator.app import Coordinator

log = logging.getLogger("tensorgrid.coordinator.training")
CHECKPOINT_SLACK_BYTES = 1 << 20  # safetensors header and the step counter, over 3 × the weights


class Auditor:
    """Owned by the RoundManager; `lock` serializes torch work on the coordinator's threads."""

    def __init__(self, app: Coordinator, lock: asyncio.Lock) -> None:
        self.app = app
        self.lock = lock
        self._secret = bytes.fromhex(app.state.meta_value("training_audit_secret", secrets.token_hex(32)))
        self._busy: set[tuple[str, int]] = set()

    # ---- on accept ------------------------------------------------------------------------------
    async def plan(self, task: TaskRecord, node: str) -> AuditPlan | None:
        """Whether to audit this training result, and what to ask the node to reveal.

        Raises Rejected for a result of a round that has closed (or a job that ended).
        """
        app = self.app
        view = await app.db(round_view, app.state, task.job_id)
        w = view.spec.workers_per_round if view is not None else 1
        if view is None or task.index // w != view.round:
            raise Rejected("the task's round has closed: the result is no longer wanted")
        policy = VerificationPolicy(view.spec.verification or DEFAULT, view.spec.rounds * w, 0)
        if not policy.enabled:
            return None
        rep = await app.db(app.state.reputation, node)
        rng = self._rng(task.task_id, task.attempt)
        if rng.random() >= policy.check_rate(rep.consecutive_valid):
            return None
        settings, _ = await app.db(task_settings, app.state, task.task_id)
        inner = settings["inner"]
        marks = checkpoint_steps(int(inner["steps"]), int(inner["checkpoint_every"]))
        segment = rng.randrange(len(marks) - 1)
        weights = int(settings["blobs"]["weights"]["size"])
        return AuditPlan(
            job_id=task.job_id,
            round_no=view.round,
            segment=segment,
            steps=tuple(reveal_plan(marks, segment)),
            max_bytes=3 * weights + CHECKPOINT_SLACK_BYTES,
            deadline_ms=view.deadline_ms,
        )

    def _rng(self, task_id: str, attempt: int) -> random.Random:
        seed = hmac.new(self._secret, f"train-audit:{task_id}:{attempt}".encode(), hashlib.sha256).digest()
        return random.Random(seed)

    # ---- reveals --------------------------------------------------------------------------------
    async def receive(
        self, node: str, task_id: str, attempt: int, step: int, ref: BlobRef, data: AsyncIterator[bytes], now_ms: int
    ) -> None:
        """Store one revealed checkpoint (size-limited, hash-checked); audit once all are in.

        Raises Rejected / NotFound for a reveal that was not asked for, BlobError for bytes
        that do not match the header.
        """
        app = self.app
        audit = await app.db(db.get_audit, app.state, task_id, attempt)
        db.check_reveal(audit, node, step, ref.size, now_ms)
        if not app.blobs.has(ref.sha256):
            await receive_into(app.blobs.writer(ref), data)
        else:
            async for _ in data:  # already stored (a retried reveal): drain the stream
                pass
        audit = await app.db(db.record_reveal, app.state, task_id, attempt, node, step, ref.sha256, now_ms)
        if audit.complete:
            app.spawn(self._audit_and_poke(audit))

    async def _audit_and_poke(self, audit: Audit) -> None:
        try:
            await self.run(audit)
        except Exception:  # the round manager retries it on its next pass
            log.exception("auditing task %s/%d failed", audit.task_id[:12], audit.attempt)
        self.app.rounds.poke([audit.job_id])

    # ---- checking and settling ------------------------------------------------------------------
    async def run(self, audit: Audit) -> str:
        """Check a fully revealed audit and settle it; returns its state afterwards."""
        key = (audit.task_id, audit.attempt)
        if key in self._busy or audit.state != PENDING:
            return audit.state
        self._busy.add(key)
        try:
            case = await self._case(audit)
            async with self.lock:
                finding = await self.app.work(check_reveal, case)
            outcome = Outcome(
                PASSED if finding.passed else FAILED,
                finding.reason,
                "" if finding.passed else finding.evidence,
                int(finding.replay_seconds * 1000),
            )
            await self.app.db(db.settle, self.app.state, audit, outcome, _now_ms())
            log.info(
                "audit of task %s/%d from %s: %s%s",
                audit.task_id[:12],
                audit.attempt,
                audit.node,
                outcome.state,
                f" ({outcome.reason})" if outcome.reason else "",
            )
            return outcome.state
        finally:
            self._busy.discard(key)

    async def _case(self, audit: Audit) -> AuditCase:
        app = self.app
        program, shard, settings = await app.db(db.task_files, app.state, audit.task_id)
        inner = InnerSettings.from_dict({**settings["inner"], "seed": settings["seeds"][shard], "device": "cpu"})
        commitment = await app.db(db.receipt_commitment, app.state, audit.task_id, audit.attempt)
        path = app.blobs.path_for
        return AuditCase(
            program=path(program),
            shard=path(shard),
            weights=path(str(settings["blobs"]["weights"]["sha256"])),
            result=path(audit.output_sha),
            settings=inner,
            commitment=commitment,
            segment=audit.segment,
            revealed={step: path(sha) for step, sha in audit.revealed.items()},
        )

    async def settle_round(self, view: RoundView, now_ms: int) -> dict[int, str]:
        """Finish what can be finished of the round's audits; slot → audit state of its result."""
        app = self.app
        for audit in await app.db(db.round_audits, app.state, view.job_id, view.round):
            if audit.state != PENDING:
                continue
            if audit.complete:
                await self.run(audit)
            elif now_ms >= audit.deadline_ms:
                missing = sorted(set(audit.steps) - set(audit.revealed))
                reason = f"checkpoints at steps {missing} were not revealed by the round's deadline"
                await app.db(db.settle, app.state, audit, Outcome(EXPIRED, reason), now_ms)
        w = view.spec.workers_per_round
        states = await app.db(db.result_audit_states, app.state, view.job_id, view.round * w, (view.round + 1) * w)
        return {idx - view.round * w: state for idx, state in states.items()}


def usable(state: str | None) -> bool:
    """May a result with this audit state (None: not audited) go into its round's outer step?"""
    return state in (None, PASSED)


def _now_ms() -> int:
    from coordinator.training import rounds

    return rounds._now_ms()


__all__ = ["Auditor", "FAILED", "usable"]
