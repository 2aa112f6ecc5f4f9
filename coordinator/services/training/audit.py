"""Auditing training results at run time: draw, collect reveals, replay, settle.

When a training result is accepted, the job's verification policy draws whether to audit it
(new nodes always, trusted ones down to the floor) and up to which checkpoint of its chain
to replay from the round's weights; both come from an HMAC of a coordinator secret, so a
node cannot predict them. The node then reveals the model part of the checkpoints asked for
(RevealCheckpoint: none when the replay runs to the end); once all are in,
the coordinator checks them in a sandboxed child (services.sandboxed, running
services.training.replay) and settles the audit; a replay over the sandbox's limits settles
"unverified" (paid, nobody blamed). The round manager calls settle_round before closing a round: audits whose reveals
are all in are checked there too (e.g. after a restart) and the rest expire at the round's
deadline, so a round never closes on a result whose audit is still open.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable

from coordinator.errors import Rejected
from coordinator.repositories.store import Store
from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.training import audits as db
from coordinator.repositories.training.audits import (
    EXPIRED,
    FAILED,
    PASSED,
    PENDING,
    UNVERIFIED,
    Audit,
    AuditPlan,
    Outcome,
)
from coordinator.repositories.training.rounds import RoundView, round_view, task_settings
from coordinator.services.blobs import drain, receive_into
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import SandboxFailure, replay_audit
from coordinator.services.training.cases import AuditCase, Finding, reveal_plan
from coordinator.services.verification.policy import DEFAULT, VerificationPolicy
from tensorgrid.blobs import BlobStore
from tensorgrid.types import BlobRef

# tensorgrid.training imports torch, so it is imported where a training job needs it: a coordinator
# imports torch only once it runs one.

log = logging.getLogger("tensorgrid.coordinator.training")
CHECKPOINT_SLACK_BYTES = 1 << 20  # safetensors header and the step counter, over the weights' size


class Auditor:
    """Owned by the RoundManager; `lock` serializes torch work on the coordinator's threads, and
    `poke(job_ids)` tells the round manager an audit of those jobs settled."""

    def __init__(
        self,
        rt: Runtime,
        repos: Store,
        blobs: BlobStore,
        secret: bytes,
        lock: asyncio.Lock,
        poke: Callable[[Iterable[str]], None],
    ) -> None:
        self.rt = rt
        self.engine = repos.engine
        self.streak = repos.verification.streak  # trust per job (repositories/verification/trust.py)
        self.blobs = blobs
        self.lock = lock
        self._secret = secret
        self._poke = poke
        self._busy: set[tuple[str, int]] = set()

    # ---- on accept ------------------------------------------------------------------------------
    async def plan(self, task: TaskRecord, node: str) -> AuditPlan | None:
        """Whether to audit this training result, and what to ask the node to reveal.

        Raises Rejected for a result of a round that has closed (or a job that ended).
        """
        rt = self.rt
        view = await rt.db(round_view, self.engine, task.job_id)
        w = view.spec.workers_per_round if view is not None else 1
        if view is None or task.index // w != view.round:
            raise Rejected("the task's round has closed: the result is no longer wanted")
        policy = VerificationPolicy(view.spec.verification or DEFAULT, view.spec.rounds * w, 0)
        if not policy.enabled:
            return None
        streak = await rt.db(self.streak, node, task.job_id, policy.spec.trust_after)
        rng = self._rng(task.task_id, task.attempt)
        if rng.random() >= policy.check_rate(streak):
            return None
        settings, _ = await rt.db(task_settings, self.engine, task.task_id)
        from tensorgrid.training.commitments import checkpoint_steps

        inner = settings["inner"]
        marks = checkpoint_steps(int(inner["steps"]), int(inner["checkpoint_every"]))
        segment = rng.randrange(len(marks) - 1)
        weights = int(settings["blobs"]["weights"]["size"])
        return AuditPlan(
            job_id=task.job_id,
            round_no=view.round,
            segment=segment,
            steps=tuple(reveal_plan(marks, segment)),
            max_bytes=weights + CHECKPOINT_SLACK_BYTES,  # a model part: weights, buffers, counter
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
        rt, blobs = self.rt, self.blobs
        audit = await rt.db(db.get_audit, self.engine, task_id, attempt)
        db.check_reveal(audit, node, step, ref.size, now_ms)
        if not blobs.has(ref.sha256):
            await receive_into(blobs.writer(ref), data)
        else:  # already stored (a retried reveal): drain the stream, never past the announced size
            await drain(data, ref.size)
        audit = await rt.db(db.record_reveal, self.engine, task_id, attempt, node, step, ref.sha256, now_ms)
        if audit.complete:
            rt.spawn(self._audit_and_poke(audit))

    async def unrevealed(self, task_id: str, attempt: int, node: str, output_sha: str) -> tuple[int, ...]:
        """The steps the open audit of `node`'s accepted result (`output_sha`) still waits for; ()
        when there is no such audit, it is over, or its deadline passed."""
        audit = await self.rt.db(db.get_audit, self.engine, task_id, attempt)
        if audit is None or audit.node != node or audit.output_sha != output_sha or audit.state != PENDING:
            return ()
        if self.rt.now_ms() > audit.deadline_ms:
            return ()
        return tuple(step for step in audit.steps if step not in audit.revealed)

    def starter(self, task_id: str, attempt: int) -> Callable[[], None]:
        """What starts the audit of a result that waits on no reveal, once its accept committed
        (its round may close before the round manager's next pass; a reveal would start it)."""

        def start() -> None:
            self.rt.spawn(self._start(task_id, attempt))

        return start

    async def _start(self, task_id: str, attempt: int) -> None:
        audit = await self.rt.db(db.get_audit, self.engine, task_id, attempt)
        if audit is not None and audit.complete:
            await self._audit_and_poke(audit)

    async def _audit_and_poke(self, audit: Audit) -> None:
        try:
            await self.run(audit)
        except Exception:  # the round manager retries it on its next pass
            log.exception("auditing task %s/%d failed", audit.task_id[:12], audit.attempt)
        self._poke([audit.job_id])

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
                finding = await self._replay(case)
            if finding is None:
                outcome = Outcome(UNVERIFIED, "the coordinator could not replay it within its sandbox's limits")
            else:
                outcome = Outcome(
                    PASSED if finding.passed else FAILED,
                    finding.reason,
                    "" if finding.passed else finding.evidence,
                    int(finding.replay_seconds * 1000),
                )
            await self.rt.db(db.settle, self.engine, audit, outcome, self.rt.now_ms())
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

    async def _replay(self, case: AuditCase) -> Finding | None:
        """The replay's finding; None when the sandboxed child went over its limits or died
        (the program's cost is the submitter's choice, not the node's fault)."""
        try:
            return await self.rt.refereed(replay_audit, self.rt, self.blobs, case)
        except SandboxFailure as e:
            if e.raised:
                raise
            log.warning("cannot replay the audit of %s: %s", case.result.name[:12], e)
            return None

    async def _case(self, audit: Audit) -> AuditCase:
        rt = self.rt
        from tensorgrid.training.inner import InnerSettings

        program, shard, settings = await rt.db(db.task_files, self.engine, audit.task_id)
        inner = InnerSettings.from_dict({**settings["inner"], "seed": settings["seeds"][shard], "device": "cpu"})
        commitment = await rt.db(db.receipt_commitment, self.engine, audit.task_id, audit.attempt)
        path = self.blobs.path_for
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
        rt = self.rt
        for audit in await rt.db(db.round_audits, self.engine, view.job_id, view.round):
            if audit.state != PENDING:
                continue
            if audit.complete:
                await self.run(audit)
            elif now_ms >= audit.deadline_ms:
                missing = sorted(set(audit.steps) - set(audit.revealed))
                reason = f"checkpoints at steps {missing} were not revealed by the round's deadline"
                await rt.db(db.settle, self.engine, audit, Outcome(EXPIRED, reason), now_ms)
        w = view.spec.workers_per_round
        states = await rt.db(db.result_audit_states, self.engine, view.job_id, view.round * w, (view.round + 1) * w)
        return {idx - view.round * w: state for idx, state in states.items()}


def usable(state: str | None) -> bool:
    """May a result with this audit state (None: not audited) go into its round's outer step?"""
    return state in (None, PASSED, UNVERIFIED)


__all__ = ["Auditor", "FAILED", "usable"]
