"""Tasks: leases kept alive by heartbeats, failures and reissue (granting leases: repositories.leasing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from coordinator.config import LeaseTiming
from coordinator.db import kept
from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.errors import Forged, NotFound, Rejected
from coordinator.repositories import claims, leasing, limit_claims
from coordinator.repositories.heartbeats import BeatAnswer, Heartbeat, heartbeat_in
from coordinator.repositories.jobs import end_job
from coordinator.repositories.leasing import Barred
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.locks import lock_in_order
from coordinator.repositories.nodes import node_failed
from tensorgrid.types import BlobRef, ErrorKind, JobState, Lease, Receipt, TaskError

# Failures that say the workload itself is bad, not the node: no backoff for the node once a
# second node confirms them; until then they count against their reporter (repositories.claims).
# A program error is one from a run on any device class (a CUDA run's: repositories.claim_devices);
# so is a node's timeout on a task the referee reviews, and its out-of-memory report from a CPU run
# of one whose memory it measures (limit_claims.over_limit: the program past its time or memory limit).
WORKLOAD_ERRORS = (ErrorKind.INVALID_INPUT, ErrorKind.UNSAFE_INPUT, ErrorKind.PROGRAM_ERROR)
# Expired leases one reaping transaction reissues. It locks their nodes' and jobs' rows until it
# commits, six statements a lease later: 500 at a time held them for up to 8 s on a coordinator
# short of CPU (benchmarks.fleet at 5,000 nodes, pg_stat_activity), every result and heartbeat of
# those nodes waiting behind it. The reaper runs batches until one comes back short.
REAP_BATCH = 100
ENDED = "ended"  # the job event of a task that failed for good in a job that goes on without it (end_task)


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    job_id: str
    index: int
    state: str
    kind: str
    attempt: int
    node: str | None
    deadline_ms: int | None
    input: BlobRef
    rows: int
    last_failed_node: str | None = None  # whose lease of it last ended without a result
    lost_attempt: int | None = None  # the attempt of that lease, if it expired or was left behind (lost_lease)


def lost_lease(task: Any, node: str, attempt: int) -> bool:
    """Whether a result of `node` for `attempt` comes after that lease ended, before anyone's
    result: its lease was the last to end without a result, and it ended by itself (it expired,
    or a restart left it behind: repositories.heartbeats), not by a refusal of its result nor by
    its node's own report; and the task is pending at that attempt, or leased to another node
    at the next one, with nothing handed in since. The result of a node restarted with its work
    kept on disk, or cut off from the coordinator past its lease, is then taken as its lease's
    would have been (results.claim) rather than the work thrown away. `task`: a TaskRecord or a
    tasks row. A result of that attempt accepted once and taken back (caught by a check: pending
    again at its attempt, away from its node) has its receipt on record, which results.claim
    looks for."""
    if task.last_failed_node != node or task.lost_attempt != attempt:
        return False
    return (task.state == "pending" and task.attempt == attempt) or (
        task.state == "leased" and task.attempt == attempt + 1
    )


class TaskRepository:
    """Tasks over one engine; each method is its own transaction."""

    def __init__(self, engine: Engine, quorum: int) -> None:
        self.engine = engine
        self.quorum = quorum  # further distinct claims that confirm after an undecided review (claims.claim)
        # Task kinds whose claims the referee reviews (repositories.claims); set by the
        # composition root from the job kinds that can run their tasks there.
        self.reviewed: frozenset[str] = frozenset()
        # Of those, the task kinds whose memory the referee measures (services.verification.memory):
        # a node's out-of-memory report on one is a claim (limit_claims.over_limit); set there too.
        self.measured: frozenset[str] = frozenset()
        # Jobs this process has seen started in the database, so leasing skips the queued →
        # running update for them: each job costs one no-op UPDATE after its start, then is cached.
        self._started_jobs: set[str] = set()

    def lease_many(
        self,
        requests: list[tuple[str, int]],
        now_ms: int,
        timing: LeaseTiming,
        barred: Barred | None = None,
    ) -> list[tuple[list[Lease], int] | Rejected]:
        """Serve many (node, max_tasks) lease requests in one transaction.

        barred(conn, node), when given, names jobs whose tasks the node may not take (e.g. too little stake).
        """
        with kept.begin(self.engine) as conn:
            return self.lease_in(conn, requests, now_ms, timing, barred)

    def lease_in(
        self,
        conn: Connection,
        requests: list[tuple[str, int]],
        now_ms: int,
        timing: LeaseTiming,
        barred: Barred | None = None,
    ) -> list[tuple[list[Lease], int] | Rejected]:
        """lease_many inside the caller's transaction (e.g. the one accepting the nodes' results)."""
        return leasing.lease_in(conn, requests, now_ms, timing, barred, self._started_jobs)

    def lease_tasks(self, address: str, max_tasks: int, now_ms: int, timing: LeaseTiming) -> tuple[list[Lease], int]:
        """Grant up to max_tasks pending tasks the node can run; returns (leases, retry_after_ms)."""
        (outcome,) = self.lease_many([(address, max_tasks)], now_ms, timing)
        if isinstance(outcome, Rejected):
            raise outcome
        return outcome

    def heartbeat(
        self,
        address: str,
        active: list[tuple[str, int]],
        draining: bool,
        now_ms: int,
        timing: LeaseTiming,
        session: str = "",
    ) -> list[tuple[str, int]]:
        """Keep the node's live leases alive; returns the leases it no longer holds (revoked).
        session: the hash of the session token it came with ("": none, nothing left behind is released)."""
        return self.heartbeat_many([(address, active, draining, session)], now_ms, timing)[0][0]

    def heartbeat_many(self, beats: list[Heartbeat], now_ms: int, timing: LeaseTiming) -> list[BeatAnswer]:
        """Many nodes' heartbeats in one transaction (repositories.heartbeats); per heartbeat, the
        leases it no longer holds and the jobs of leases it left behind that were reissued."""
        with kept.begin(self.engine) as conn:
            return heartbeat_in(conn, beats, now_ms, timing, lambda c, row, e, at: self._fail(c, row, e, at, lost=True))

    def any_pending(self) -> bool:
        """Whether a task of any job waits for some node (the long polls' shared idle check)."""
        with self.engine.connect() as conn:
            t = s.tasks
            return conn.execute(select(t.c.task_id).where(t.c.state == "pending").limit(1)).first() is not None

    def count_pending(self, limit: int) -> int:
        """How many tasks wait for some node, counted up to limit (the idle long polls' watcher)."""
        with self.engine.connect() as conn:
            t = s.tasks
            few = select(t.c.task_id).where(t.c.state == "pending").limit(max(1, limit)).subquery()
            return int(conn.execute(select(func.count()).select_from(few)).scalar_one())

    def get_task(self, task_id: str) -> TaskRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.tasks).where(s.tasks.c.task_id == task_id)).first()
        if row is None:
            raise NotFound(f"no task {task_id}")
        return _record(row)

    def fail_task(self, address: str, task_id: str, attempt: int, error: TaskError, now_ms: int) -> bool:
        """A node reports it could not finish; the task is reissued (True) or its job fails (False)."""
        with self.engine.begin() as conn:
            row = conn.execute(select(s.tasks).where(s.tasks.c.task_id == task_id).with_for_update()).first()
            check_holder(row, address, attempt, now_ms, allow_expired=True)
            return self._fail(conn, row, error, now_ms)

    def reject_task_result(
        self, address: str, task_id: str, attempt: int, reason: str, now_ms: int, *, forged: bool = False
    ) -> None:
        """The lease holder sent a result that failed verification: reissue elsewhere, count it.

        A forged result (see errors.Forged) counts against the node only, not the task's attempts.
        """
        with self.engine.begin() as conn:
            row = conn.execute(select(s.tasks).where(s.tasks.c.task_id == task_id).with_for_update()).first()
            if row is not None and row.state == "cancelled" and row.node == address:
                return  # late for a closed round or a cancelled job: refused, not held against the node
            if (
                row is not None
                and row.state == "done"
                and row.last_failed_node == address
                and row.attempt + 1 == attempt
            ):
                # Its lease ended when the node that held the attempt before handed that one's
                # result in late (results.claim): refused, not held against it.
                return
            if row is not None and row.state == "done" and row.node == address and row.attempt == attempt:
                # Its own accepted result again: the answer was lost (a replica or the coordinator
                # died after committing it) and the node handed its kept copy in. Refused, not held
                # against it; nothing is credited twice (the task is done).
                return
            if row is None or row.node != address or row.attempt != attempt or row.state != "leased":
                node_failed(conn, address, now_ms, rejection=True)
                return
            error = TaskError(ErrorKind.EXECUTION, f"result rejected: {reason}")
            self._fail(conn, row, error, now_ms, rejection=True, forged=forged)

    def release_undelivered(self, address: str, leases: list[tuple[str, int]], now_ms: int) -> int:
        """Leases granted to a node that never heard of them (its call had ended when they
        committed): pending again at once, counted against neither the task nor the node (they
        would otherwise expire a TTL later as the node's failure). Returns how many."""
        held = set(leases)
        error = TaskError(ErrorKind.RELEASED, "the lease never reached its node (its call had ended)")
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(s.tasks)
                .where(s.tasks.c.task_id.in_(sorted(t for t, _ in held)), s.tasks.c.node == address)
                .where(s.tasks.c.state == "leased")
                .order_by(s.tasks.c.task_id)
                .with_for_update()
            ).all()
            rows = [r for r in rows if (r.task_id, r.attempt) in held]  # not handed in, reissued or ended since
            lock_in_order(conn, (), {r.job_id for r in rows})
            return sum(self._fail(conn, row, error, now_ms) for row in rows)

    def reap_expired(self, now_ms: int) -> int:
        """Reissue up to REAP_BATCH leases whose holder went silent past the deadline; returns how many."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(s.tasks)
                .where(s.tasks.c.state == "leased", s.tasks.c.deadline_ms < now_ms)
                .order_by(s.tasks.c.node, s.tasks.c.task_id)  # its nodes' rows locked in address order
                .limit(REAP_BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            # Every node and job row this batch will change, before the first change: one row
            # at a time it took node A, job X, then waited on node B that a result batch held
            # while that batch waited on job X (a deadlock at 5,000 nodes on PostgreSQL).
            lock_in_order(conn, {r.node for r in rows if r.node}, {r.job_id for r in rows})
            for row in rows:
                self._fail(conn, row, TaskError(ErrorKind.TIMEOUT, "lease expired without a result"), now_ms, lost=True)
        return len(rows)

    def _fail(
        self,
        conn: Connection,
        row: Any,
        error: TaskError,
        now_ms: int,
        *,
        rejection: bool = False,
        forged: bool = False,
        lost: bool = False,
    ) -> bool:
        """lost: the lease ended by itself (expired, or left behind by a restart), not by its
        node's word or a refusal: its node may still hand the result in (lost_lease)."""
        released = error.kind == ErrorKind.RELEASED
        node = row.node
        reviewed = row.kind in self.reviewed
        # its node's own word that the program ran past the task's time or memory limit (never a lease seen to expire)
        measured = row.kind in self.measured
        over = not lost and limit_claims.over_limit(conn, row, error, reviewed=reviewed, measured=measured)
        claimed = error.kind in WORKLOAD_ERRORS or over
        # A node's word that the input is bad counts against the task only once another node's confirms it.
        said = claims.Claim(confirmed=True, spends=0 if released or forged else 1)
        if claimed and not rejection and node:
            kind = error.kind.value
            said = claims.claim(conn, row.task_id, node, kind, now_ms, quorum=self.quorum, reviewed=reviewed)
        if not released and (rejection or not claimed or said.own):
            node_failed(conn, node, now_ms, rejection=rejection)
        if said.review:  # a second claim: nobody is believed until the referee has run the task
            again = claims.claimants(conn, row.task_id) == [node]  # its own second claim: nobody else claimed
            conn.execute(
                update(s.tasks)
                .where(s.tasks.c.task_id == row.task_id)
                .values(state=claims.CONTESTED, node=None, deadline_ms=None, last_failed_node=node)
                .values(last_failed_ms=now_ms)
            )
            by = "again by the same node, leased it after its first claim" if again else "by a second node"
            what = f"{error.kind.value} claimed {by} (the referee runs the task): {error.message}"
            append_event(conn, row.job_id, claims.CONTESTED, now_ms, task_index=row.idx, node=node, message=what[:2000])
            return True
        message = f"{error.message} ({said.note})" if said.note else error.message
        reissued = reissue_or_end(
            conn,
            row,
            row.failures + said.spends,
            (error.kind.value, message),
            now_ms,
            counted=not released and said.confirmed,
            node=None if released else node,
            event="released" if released else "reissued",
            unconfirmed=not said.confirmed,
            lost_attempt=row.attempt if lost else None,
        )
        if said.paid:  # a claim believed because the referee's run failed: paid as that run's claimants
            claim_pay.pay(conn, row.job_id, now_ms)
        return reissued


def reissue_or_end(
    conn: Connection,
    row: Any,
    failures: int,
    error: tuple[str, str],
    now_ms: int,
    *,
    counted: bool,
    node: str | None,
    event: str = "reissued",
    unconfirmed: bool = False,
    lost_attempt: int | None = None,
) -> bool:
    """The task pending again with `failures` spent (`counted`: as one of its job's task
    failures), or its job failed once they reach its attempts; error: (kind, message) of
    the last failure. Whether it was reissued."""
    kind, text = error
    if failures >= row.max_attempts:
        fail_job(conn, row, f"task {row.idx} failed {failures} times; last error ({kind}): {text}", now_ms)
        return False
    conn.execute(
        update(s.tasks)
        .where(s.tasks.c.task_id == row.task_id)
        .values(
            state="pending",
            node=None,
            deadline_ms=None,
            failures=failures,
            last_failed_node=node,
            last_failed_ms=now_ms,
            lost_attempt=lost_attempt,
        )
    )
    if counted:
        conn.execute(
            update(s.jobs).where(s.jobs.c.job_id == row.job_id).values(task_failures=s.jobs.c.task_failures + 1)
        )
    what = f"{'unconfirmed ' if unconfirmed else ''}{kind}: {text}"
    append_event(conn, row.job_id, event, now_ms, task_index=row.idx, node=node or "", message=what[:2000])
    return True


def end_task(conn: Connection, row: Any, failures: int, message: str, now_ms: int, node: str | None) -> None:
    """The task (a tasks row) failed for good in a job that goes on without it (training: its round
    closes on its quorum, or at its deadline on the results it has): it ends ("failed", counted as
    one of its job's task failures), never leased again, and its job runs on."""
    conn.execute(
        update(s.tasks)
        .where(s.tasks.c.task_id == row.task_id)
        .values(state="failed", node=None, deadline_ms=None, failures=failures, last_failed_node=node)
        .values(last_failed_ms=now_ms)
    )
    more = {"task_failures": s.jobs.c.task_failures + 1}
    append_event(conn, row.job_id, ENDED, now_ms, job_values=more, task_index=row.idx, node=node or "", message=message)


def fail_job(conn: Connection, row: Any, message: str, now_ms: int) -> None:
    """The task (a tasks row) failed for good: its job fails, saying `message`."""
    conn.execute(update(s.jobs).where(s.jobs.c.job_id == row.job_id).values(task_failures=s.jobs.c.task_failures + 1))
    end_job(conn, row.job_id, JobState.FAILED, now_ms, error=message)


def check_holder(row: Any, address: str, attempt: int, now_ms: int, *, allow_expired: bool = False) -> None:
    if row is None:
        raise NotFound("no such task")
    if row.node != address or row.attempt != attempt:
        raise Forged("this node does not hold that lease")
    if row.state != "leased":
        raise Forged(f"the lease is over (task is {row.state})")
    if not allow_expired and row.deadline_ms is not None and row.deadline_ms < now_ms:
        raise Forged("the lease expired before the result arrived")


def check_matches(row: Any, receipt: Receipt, output_rows: int | None) -> None:
    if receipt.job_id != row.job_id:
        raise Forged("receipt names another job than the task's")
    if receipt.input_hash != row.input_sha:
        raise Forged("receipt's input hash is not the task's input")
    if output_rows is not None and output_rows != row.rows:
        raise Rejected(f"output has {output_rows} rows, the task's input has {row.rows}")


def _record(r: Any) -> TaskRecord:
    return TaskRecord(
        task_id=r.task_id,
        job_id=r.job_id,
        index=r.idx,
        state=r.state,
        kind=r.kind,
        attempt=r.attempt,
        node=r.node,
        deadline_ms=r.deadline_ms,
        input=BlobRef(r.input_sha, r.input_size),
        rows=r.rows,
        last_failed_node=r.last_failed_node,
        lost_attempt=r.lost_attempt,
    )
