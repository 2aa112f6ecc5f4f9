"""Accepting results: the SubmitResult pipeline, and the transaction that records a batch of them.

Pipeline (`Acceptance.submit`): the cheap identity checks against the lease (services.verifier),
the output bytes (hash-checked as they arrive), the kind's structural check of the output and
its `examine` (what accepting will do: open a spot-check, settle one, open an audit), then the
result joins a group commit. On any refusal the sender is counted and the task reissued.

Transaction (`ResultAcceptance.accept_results`): each result claims its task on its own
(refused ones say why); then, for the accepted, the receipts and node counters, the credits
of results paid now, each kind's effect, and the jobs' progress and events — all in one
transaction, so a result is durable before its node is told it was accepted. A result may
carry its node's request for its next tasks (piggybacked leasing): those are leased after the
accepts, in the same transaction, with exactly LeaseTasks' checks (`accept_and_lease`), so a
busy node takes one round trip and one commit per task instead of two of each.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Engine

from coordinator.commits import GroupCommitter
from coordinator.config import Limits
from coordinator.db import kept
from coordinator.errors import Forged, NotFound, Rejected
from coordinator.repositories import results
from coordinator.repositories.claims import disproved
from coordinator.repositories.jobs import job_complete
from coordinator.repositories.leasing import MAX_PER_CALL
from coordinator.repositories.ledger import credits
from coordinator.repositories.tasks import TaskRecord, TaskRepository, lost_lease
from coordinator.services.aggregation import Aggregation
from coordinator.services.blobs import MemoryBudget, collect, drain, receive_into
from coordinator.services.kind import Effect, Kind, KindLookup
from coordinator.services.runtime import Runtime
from coordinator.services.scheduler import LeaseOutcome, Scheduler
from coordinator.services.verifier import Verifier
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import BlobError, HashMismatch
from tensorgrid.types import BlobRef, Lease, Receipt

log = logging.getLogger("tensorgrid.coordinator")
SMALL_OUTPUT_BYTES = 64 * 1024
DEFAULT_MEMORY_BYTES = 64 << 20  # small outputs held in memory at once, over all calls
MAX_WANT = MAX_PER_CALL  # leases one result may ask for (as one LeaseTasks call)
Outcome = tuple[str, bool] | Rejected  # (job id, job complete) or why it was refused
Granted = tuple[list[Lease], int]  # leases, retry_after_ms: what LeaseTasks would have answered
Committed = tuple[str, bool, Granted | None]  # an accepted result's outcome, and its node's next leases
# A result's output: streamed chunks (SubmitResult), or the whole of it in one message (SubmitSmallResult:
# no async generator to build and drive per call).
Output = bytes | AsyncIterator[bytes]


@dataclass(frozen=True)
class ResultItem:
    """A result whose signature and bytes are verified; rows for outputs that must have them."""

    node: str
    receipt: Receipt
    output: BlobRef
    rows: int | None
    effect: Effect | None = None  # what its kind does on accepting it; None: paid now, nothing else
    want: int = 0  # leases its node asks for with it (granted once it is accepted, in its transaction)


LeaseIn = Callable[[Connection, list[tuple[str, int]], int], list[LeaseOutcome]]


class ResultAcceptance:
    """The accepting transaction over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def accept_results(self, items: list[ResultItem], now_ms: int) -> list[Outcome]:
        """Record many results in one transaction; each is checked against its task on its own.

        An accepted result's outcome is (job id, whether its job is complete once this batch commits).
        """
        with kept.begin(self.engine) as conn:
            return self._accept(conn, items, now_ms)

    def accept_and_lease(
        self, items: list[ResultItem], now_ms: int, lease_in: LeaseIn
    ) -> tuple[list[Outcome], list[LeaseOutcome | None]]:
        """accept_results, then, in the same transaction, the next leases of the accepted results
        that ask for some (ResultItem.want); None for the others (refused, or wanting none)."""
        with kept.begin(self.engine) as conn:
            outcomes = self._accept(conn, items, now_ms)
            # After the accepts: an accepted result clears its node's backoff, as it would before a LeaseTasks.
            wanting = [
                i for i, (item, o) in enumerate(zip(items, outcomes, strict=True))
                if item.want and not isinstance(o, Rejected)
            ]  # fmt: skip
            granted = lease_in(conn, [(items[i].node, items[i].want) for i in wanting], now_ms) if wanting else []
        leases: list[LeaseOutcome | None] = [None] * len(items)
        for i, lease in zip(wanting, granted, strict=True):
            leases[i] = lease
        return outcomes, leases

    def _accept(self, conn: Connection, items: list[ResultItem], now_ms: int) -> list[Outcome]:
        outcomes: list[Outcome] = []
        accepted: list[tuple[ResultItem, results.Claimed]] = []
        for item in items:
            try:
                claimed = results.claim(conn, item.node, item.receipt, item.output, item.rows, now_ms)
            except Rejected as e:
                outcomes.append(e)
                continue
            accepted.append((item, claimed))
            outcomes.append((claimed.job_id, False))
        if not accepted:
            return outcomes
        claims = [c for _, c in accepted]
        results.record_receipts(conn, claims, now_ms)
        # Pay for unchecked work in the transaction that accepts it (priced jobs only); a
        # checked result is paid when its check passes, a check task is the grid's own cost.
        paid = [
            (c.node, c.job_id, c.receipt.task_id, c.receipt.attempt)
            for i, c in accepted
            if i.effect is None or i.effect.pays_now
        ]
        credits.credit_results(conn, paid, now_ms)
        for item, claimed in accepted:
            if item.effect is not None:
                item.effect.apply(conn, claimed, now_ms)
        unfinished = results.record_progress(
            conn, [c for i, c in accepted if i.effect is None or i.effect.counts_progress], now_ms
        )
        for c in claims:
            if c.undecided:  # the referee could not decide this task's claims: this result disproves them
                disproved(conn, c.job_id, c.receipt.task_id, c.index, c.node, now_ms)
        # A job is complete once every task is done and every check of its results is settled
        # (a job the progress update shows has tasks left needs no query).
        touched = {c.job_id for c in claims} - unfinished
        complete = {job_id for job_id in touched if job_complete(conn, job_id)}
        return [(o[0], o[0] in complete) if isinstance(o, tuple) else o for o in outcomes]

    def accept_result(
        self, node: str, receipt: Receipt, output: BlobRef, rows: int | None, now_ms: int
    ) -> tuple[str, bool]:
        """One result; raises Rejected."""
        (outcome,) = self.accept_results([ResultItem(node, receipt, output, rows)], now_ms)
        if isinstance(outcome, Rejected):
            raise outcome
        return outcome


@dataclass(frozen=True)
class Accepted:
    job_id: str
    complete: bool  # every task of the job is done and every check settled: it is being assembled
    reveal_steps: tuple[int, ...] = ()
    # The node's next leases, when it asked for some: None when none were tried (its node may not
    # lease: LeaseTasks says why), else (leases, retry_after_ms) as LeaseTasks would have answered.
    leases: Granted | None = None


class Acceptance:
    """The SubmitResult pipeline, shared by the servicer and the tests."""

    def __init__(
        self,
        rt: Runtime,
        engine: Engine,
        tasks: TaskRepository,
        scheduler: Scheduler,
        verifier: Verifier,
        kinds: KindLookup,
        blobs: BlobStore,
        limits: Limits,
        aggregation: Aggregation,
        memory: MemoryBudget | None = None,
    ) -> None:
        self.rt = rt
        self.aggregation = aggregation
        self.tasks = tasks
        self.scheduler = scheduler
        self.verifier = verifier
        self.kinds = kinds
        self.blobs = blobs
        self.limits = limits
        self.memory = memory if memory is not None else MemoryBudget(DEFAULT_MEMORY_BYTES)
        self.transaction = ResultAcceptance(engine)
        self.results: GroupCommitter[ResultItem, Committed] = GroupCommitter(self._accept_batch)

    async def _accept_batch(self, items: list[ResultItem]) -> list[Committed | Rejected]:
        outcomes, leases = await self.rt.db(
            self.transaction.accept_and_lease, items, self.rt.now_ms(), self.scheduler.lease_in
        )
        out: list[Committed | Rejected] = []
        for item, outcome, lease in zip(items, outcomes, leases, strict=True):
            if isinstance(outcome, Rejected):
                out.append(outcome)
                continue
            if item.effect is not None:
                item.effect.committed()
            if lease is not None and not isinstance(lease, Rejected):
                self.scheduler.granted(lease[0], item.node)
            out.append((*outcome, None if isinstance(lease, Rejected) else lease))
        return out

    async def submit(self, node: str, receipt: Receipt, size: int, data: Output, want: int = 0) -> Accepted:
        """Check, receive and accept one result; raises Rejected (and the like) after counting it.

        data: the output's bytes as they stream in, or all of them (SubmitSmallResult's one message).

        want > 0: the node also asks for up to that many next leases, granted as LeaseTasks would
        (without waiting) in the transaction that accepts the result.
        """
        try:
            if want:
                await self.scheduler.before_lease(node)
            task = await self.scheduler.task_record(receipt.task_id, node)
            kind = self.kinds.for_task(task.kind)
            if owed := await self._still_owed(task, kind, node, receipt):
                if not isinstance(data, bytes):
                    await drain(data, min(size, self.limits.max_output_bytes))  # stored when it was accepted
                return self._answer_again(task, node, owed)
            self.verifier.check_receipt(task, node, receipt)
            if lost_lease(task, node, receipt.attempt):  # examined as the lease it came from
                task = replace(task, state="leased", node=node, attempt=receipt.attempt)
            if size > self.limits.max_output_bytes:
                raise Rejected(f"output of {size} bytes is over the limit of {self.limits.max_output_bytes}")
            output = await self._receive_output(receipt, size, data)
            rows = None
            if kind.checks_output:
                rows = await self.rt.work(kind.check_output, task, receipt, self.blobs.path_for(output.sha256))
            effect = await kind.examine(task, node, output)
            try:
                job_id, complete, leases = await self.results.submit(
                    ResultItem(node, receipt, output, rows, effect, max(0, min(want, MAX_WANT)))
                )
            except Rejected:  # an earlier attempt of this result, its caller gone, may have committed first
                done = await self.rt.db(self.tasks.get_task, receipt.task_id)
                if not (owed := await self._still_owed(done, kind, node, receipt)):
                    raise
                return self._answer_again(done, node, owed)
        except (Rejected, BlobError, NotFound) as e:
            await self._reject(node, receipt, str(e), forged=isinstance(e, Forged | HashMismatch))
            raise
        finally:
            self.scheduler.forget(receipt.task_id)
        self.rt.hub.notify(job_id)
        kind.after_accept([job_id])
        if complete:
            self.aggregation.schedule(job_id)
        return Accepted(job_id, complete, effect.reveal_steps if effect is not None else (), leases)

    async def _still_owed(self, task: TaskRecord, kind: Kind, node: str, receipt: Receipt) -> tuple[int, ...]:
        """What the answer to this node's result asked of it that it still owes, when the task is
        already done by this very result: its first answer was lost (the replica that committed
        it died before answering, or the node's deadline ran out while the group commit went
        through: it commits for a caller already gone) and the node hands the result in again.
        A training audit's checkpoints are such a debt: a node reveals only what an answer names,
        and refused like any result of an ended lease, the audit waited for them until its
        round's deadline (15 minutes by default), holding the round open. (): refused as before.

        Nothing changes by answering again: the task is done, credited or not as before. The
        caller is the session's node and the output must be the one accepted, so the signature
        is not checked again."""
        if task.state != "done" or task.node != node or task.attempt != receipt.attempt:
            return ()
        if receipt.job_id != task.job_id or receipt.input_hash != task.input.sha256:
            return ()
        return await kind.still_wanted(task, node, receipt.output_hash)

    def _answer_again(self, task: TaskRecord, node: str, owed: tuple[int, ...]) -> Accepted:
        log.info(
            "task %s/%d: %s handed its accepted result in again (its answer was lost): asked again for %s",
            task.task_id[:12], task.attempt, node, list(owed),
        )  # fmt: skip
        return Accepted(task.job_id, False, owed)

    async def _receive_output(self, receipt: Receipt, size: int, data: Output) -> BlobRef:
        expected = BlobRef(receipt.output_hash, size)
        if size <= SMALL_OUTPUT_BYTES and self.memory.take(size):
            # Small outputs are checked in memory and written only if new: most no-op and
            # tiny results are already in the store, and a file per result costs more than the RPC.
            # Never more than the size announced per call, nor more than the budget in all calls:
            # beyond it, small outputs stream to disk like large ones.
            try:
                body = _whole(data, size) if isinstance(data, bytes) else await collect(data, size)
            finally:
                self.memory.give(size)
            if len(body) != size or hashlib.sha256(body).hexdigest() != receipt.output_hash:
                raise HashMismatch(f"output bytes do not hash to the receipt's {receipt.output_hash}")
            if not self.blobs.has(receipt.output_hash):
                self.blobs.put_bytes(body)
            return expected
        return await receive_into(self.blobs.writer(expected), _stream(data) if isinstance(data, bytes) else data)

    async def _reject(self, node: str, receipt: Receipt, reason: str, *, forged: bool = False) -> None:
        """Count a refused result against its sender; reissue the task if the sender held its lease."""
        log.warning("rejected result from %s for task %s/%d: %s", node, receipt.task_id[:12], receipt.attempt, reason)
        try:
            await self.rt.db(
                self.tasks.reject_task_result, node, receipt.task_id, receipt.attempt, reason, self.rt.now_ms(),
                forged=forged,
            )  # fmt: skip
            self.rt.hub.work_available(1)  # the task, if it was reissued
        except Exception:
            log.exception("could not record the rejection")


def _whole(body: bytes, size: int) -> bytes:
    """An output that came in one message, held to the size its header announced (as collect does)."""
    if len(body) > size:
        raise HashMismatch(f"more output bytes than the {size} the receipt's header announced")
    return body


async def _stream(body: bytes) -> AsyncIterator[bytes]:
    yield body
