"""Contested tasks: two nodes claimed a task's input invalid or unsafe, and the referee runs
the task before either is believed (repositories.claims says when; services.verification.reviews
runs it). These are the review's two transactions: what waits for it, and carrying out its verdict
(clean, failed, or undecided: the referee could not finish the run)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, exists, select, update

from coordinator.db import schema as s
from coordinator.repositories import claims, limit_claims
from coordinator.repositories.claim_devices import REFEREE_DEVICE
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.locks import lock_in_order
from coordinator.repositories.tasks import end_task, fail_job, reissue_or_end


@dataclass(frozen=True)
class Contested:
    """A task whose input two nodes claimed invalid or unsafe, for the referee to run."""

    task_id: str
    job_id: str
    kind: str
    model_sha: str
    input_sha: str
    settings: str  # JSON, as leased
    time_limit_ms: int  # what a node may take for it (a review's budget is a multiple of it)
    # a claim on it says the program ran past that limit (limit_claims.LIMIT_ERRORS): the review measures
    # the referee's run against it (services.verification.reviews)
    limit: bool = False
    # a claim on it says the program needed more than the task's memory limit (limit_claims.MEMORY_ERRORS):
    # the referee measures its run's peak against memory_limit_bytes (services.verification.memory)
    memory: bool = False
    memory_limit_bytes: int = 0
    submitter: str = ""  # whose job it is: the referee shares its turns among submitters (verification.turns)


DEVICES = ("cpu", "cuda")  # a task's device when its job asks for one ("any": whatever its node runs)


def _not_its_device(device: str, reason: str) -> str:
    """Why the referee's raise proves nothing for a task whose job asks for another device (CUDA):
    its program need not run on the referee's CPU at all (inference intake admits a CUDA program its
    CPU probe could not run: kinds.inference.vetting; other kinds probe a part of a task only), so a
    raise there may be the CPU's own (an operator with no CPU kernel), and confirming it would let
    two colluders fail the job and be paid. Undecided: the task goes to nodes of its device."""
    return (
        f"its run raised on the referee's {REFEREE_DEVICE} ({reason}), but the job asks for {device}, where "
        f"its program may run: that proves nothing"
    )[:2000]


class ReviewRepository:
    def __init__(self, engine: Engine, quorum: int) -> None:
        self.engine = engine
        self.quorum = quorum  # what the undecided event says more claims take (claims.claim's)
        # Task kinds whose job can finish without every task (training: a round closes on its
        # quorum), set by the composition root: a task of theirs that failed for good on the referee
        # too (raised, past its time or memory limit: a final verdict) ends alone (tasks.end_task),
        # rather than failing its whole job or going to more nodes that would fail it too.
        self.goes_on: frozenset[str] = frozenset()

    def contested(self) -> list[Contested]:
        """Tasks of open jobs waiting for the referee to review their claims (oldest first)."""
        t, j, c = s.tasks.c, s.jobs.c, s.failure_claims.c
        limits = [k.value for k in limit_claims.LIMIT_ERRORS]
        limit = exists().where(c.task_id == t.task_id, c.kind.in_(limits)).label("limit")
        memories = [k.value for k in limit_claims.MEMORY_ERRORS]
        memory = exists().where(c.task_id == t.task_id, c.kind.in_(memories)).label("memory")
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.task_id, t.job_id, t.kind, t.model_sha, t.input_sha, t.settings, t.time_limit_ms, limit)
                .add_columns(memory, t.memory_limit_bytes, j.submitter)
                .join(s.jobs, j.job_id == t.job_id)
                .where(t.state == claims.CONTESTED, j.state.in_(("queued", "running")))
                .order_by(t.last_failed_ms, t.task_id)
            ).all()
        return [
            Contested(
                r.task_id,
                r.job_id,
                r.kind,
                r.model_sha or "",
                r.input_sha,
                r.settings,
                r.time_limit_ms,
                bool(r.limit),
                bool(r.memory),
                int(r.memory_limit_bytes or 0),
                str(r.submitter),
            )  # fmt: skip
            for r in rows
        ]

    def settle_review(
        self, task_id: str, verdict: str, reason: str, now_ms: int, work: tuple[int, int] = (0, 0),
        draw: claim_pay.Draw | None = None, *, final: bool = False,
    ) -> str | None:  # fmt: skip
        """Carry out the referee's verdict (claims.CLEAN, FAILED or UNDECIDED) on a contested
        task's claims: pending again, or its job failed when the confirmed claims spent its last
        attempt. Undecided, the task is pending with nothing spent and marked (tasks.undecided_ms)
        for more distinct nodes to settle (repositories.claims); so is a clean one when a claim is
        one its clean run cannot disprove (a CUDA run's: repositories.claim_devices). Failed, its claimants are paid
        for the work the failure took: `work` is (done, of the task's), how far the referee's run
        got before it failed (repositories.ledger.claim_pay; draw: its draws, for tests); final:
        the program raised on the referee too, a failure of the task's input itself that any node
        would meet, so the task ends at once and its job fails, rather than going to the nodes its
        attempts have left (each of them paid too, now); a job that goes on without it (goes_on)
        does, the task alone ended (tasks.end_task); but for a task whose job asks for another
        device than the referee's (CUDA), such a raise is undecided (_not_its_device). The task's
        job id, or None when the task was no longer contested (its job ended, another replica
        ruled first)."""
        with self.engine.begin() as conn:
            row = conn.execute(select(s.tasks).where(s.tasks.c.task_id == task_id).with_for_update()).first()
            if row is None or row.state != claims.CONTESTED:
                return None
            lock_in_order(conn, claims.claimants(conn, task_id), [row.job_id])
            if verdict == claims.FAILED and final and row.device != REFEREE_DEVICE and row.device in DEVICES:
                verdict, reason, final = claims.UNDECIDED, _not_its_device(row.device, reason), False
            spent = claims.settle_review(conn, task_id, verdict)
            unproven = claims.unproven(conn, task_id)  # a clean run cannot disprove these (claim_devices)
            event = "reissued"
            if verdict == claims.CLEAN and not unproven:
                message = f"claims disproved: the referee ran the task cleanly ({reason})"
            elif verdict == claims.FAILED:
                message = f"claims confirmed: the referee's run failed too ({reason})"
            else:
                event = claims.UNDECIDED
                message = self._undecided(conn, task_id, reason, unproven)
                conn.execute(update(s.tasks).where(s.tasks.c.task_id == task_id).values(undecided_ms=now_ms))
            error = (claims.kind_of(conn, task_id), message)
            node = row.last_failed_node
            counted = verdict == claims.FAILED
            if counted and final:
                n = len(claims.claimants(conn, task_id))
                kind = claims.kind_of(conn, task_id)
                whose = "its claimant's" if n == 1 else f"its {n} claimants'"  # one: a node that claimed twice
                why = (
                    f"task {row.idx} failed for good: claims confirmed, the referee's run of it failed as {whose} "
                    f"did, so no more nodes run it ({kind}: {reason})"
                )
                if row.kind in self.goes_on:  # its round closes without it (training)
                    end_task(
                        conn, row, row.failures + spent, f"{why} (its job goes on without it)"[:2000], now_ms, node
                    )
                else:
                    fail_job(conn, row, why[:2000], now_ms)
            else:
                reissue_or_end(conn, row, row.failures + spent, error, now_ms, counted=counted, node=node, event=event)
            if verdict == claims.FAILED:
                claim_pay.entitle(conn, task_id, claims.claimants(conn, task_id), *work, now_ms, draw=draw)
                claim_pay.pay(conn, row.job_id, now_ms)
            return str(row.job_id)

    def _undecided(self, conn: Connection, task_id: str, reason: str, unproven: list[str]) -> str:
        """What an undecided verdict says: the referee could not finish the task, or (unproven) it ran
        it cleanly on its device class, which disproves the other claims and not these."""
        more = f"it goes to other nodes, never to its claimants, and {self.quorum} more claims would confirm them"
        if not unproven:
            return f"claims undecided: the referee could not finish the task ({reason}); {more}"
        n, k = len(claims.claimants(conn, task_id)) - len(unproven), len(unproven)
        disproved = f", disproved for the {n} other{'s' if n != 1 else ''}" if n else ""
        return (
            f"claims undecided for {k} claimant{'s' if k != 1 else ''} that ran it on another device class than "
            f"the referee's ({REFEREE_DEVICE}){disproved}: the referee ran the task cleanly ({reason}), which "
            f"disproves no program error, timeout or out-of-memory met on another device; {more}"
        )[:2000]
