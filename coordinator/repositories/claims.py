"""Failure claims: a node saying a task's input is invalid or unsafe, that the submitter's program
raised while it ran the task (a workload error: WORKLOAD_ERRORS of repositories.tasks), or that it
ran past the task's time limit or its memory limit (repositories.limit_claims).

Such a failure blames the workload, not the node, and spends one of the task's attempts, so
one node that lies about every task could fail every job. A claim therefore counts against
the task only once a second, distinct node makes one too:

- unconfirmed (no other node has claimed it): the task goes back to the pool for another node
  and spends no attempt; the claim counts against its reporter instead, once per task: a
  refusal (`nodes.rejections`) with a failure's backoff, and its verification streak reset
  (its results are checked as a newcomer's again). The same node claiming the same task again
  (leased it again after its claim) is a second claim too: see "One node claiming again" below.
- confirmed (a second node claims it): the claim spends an attempt, and so do the earlier
  unconfirmed claims it confirms; their reporters' refusals are taken back (the rejection and
  the failure it counted; the backoff already served and the streak reset stay). From then on every
  claim on the task spends an attempt, as any failure does.

Two colluding nodes could confirm each other's lie. For tasks the referee can run (`reviewed`:
inference and generation, whose shards it re-runs for rulings anyway, and training, whose whole
task it runs as a node's worker does), a second claim does not confirm: it sends the task to
review (state "contested", leased to nobody) and counts against its reporter like a first claim.
The referee then runs the task as a node would (services.verification.reviews) and
`settle_review` carries out its verdict:

- the run failed (the program raised, hit the referee's memory limit, or its input is gone;
  a run in parts, when a part truly fails: a part over the time limit is tried again): the
  claims are confirmed as above (verdict "failed"). When the program (or its input) raised on
  the referee too, the failure is the input's own, met by any node that runs it: the task ends at
  once and its job fails, naming the task and the referee's error, instead of going to the nodes
  its attempts have left (each of them a run, and a claim paid, for nothing new); a training task
  ends alone (tasks.end_task, event "ended"), its job going on without it (its round closes on its
  quorum: reviews.goes_on), as it does for any final verdict (past its time or memory limit too).
  Before, it went on to its attempts: more nodes ran a task each would fail, and its last attempt
  failed the whole job anyway. A run over the referee's memory limit, a crash or a missing blob is
  the referee's own trouble as much as the input's (a node with more memory may run it): confirmed,
  the task goes on to its attempts.
- the run was clean: the input is valid, so the claims were false (verdict "clean"). The task
  is pending again with no attempt spent and the claimants keep their refusals; any later claim
  on it is unconfirmed, whoever makes it, and the task is never reviewed again; a node's claim on
  it after its own earlier one is that node's own failure (below). Per claimant, though: a CUDA
  run's program error, timeout or out-of-memory is one a clean CPU run cannot disprove (verdict "other_device":
  repositories.claim_devices), so for it the run is undecided (next), and so is such a claim
  made later; a claim the run disproves, made later, is marked "clean" at once and counts for
  nothing (never towards QUORUM, never confirmed by it).
- the referee could not decide (verdict "undecided": the parts spent the task's review budget,
  --review-budget-factor × its time limit, or one batch or inner step, the smallest part there
  is, timed out --review-stalls times in a row, longer than a referee request: the
  coordinator's CPU is too slow for the job, not the input proven bad). That proves nothing either
  way, so it neither confirms nor disproves: the task is pending again with no attempt spent,
  the claimants keep their refusals, and more distinct nodes settle it (`tasks.undecided_ms` set).
  It is never leased again to a node that claimed it (repositories.leasing), so a result that
  passes verification as usual comes from a node that never claimed, and proves the claims false:
  the task is done, and the accepting transaction records a "disproved" job event naming how many
  claimants there were (`disproved`). Nothing more counts against them: each already holds a
  refusal (backoff, streak reset), what a false claim costs when the referee disproves it, and
  the evidence now is one stranger's result, itself checked only as any result is (a cheat caught
  later is taken back, the task reissued to yet another non-claimant). An honest claimant whose
  device truly failed on the input and a colluder look the same here; one refusal each is what
  the lie cost a colluder (it failed nothing), and a harsher count would let a single wrong result
  punish honest claimants. A claim by a further node counts against its reporter until QUORUM
  (--undecided-quorum, 2 by default: config.ReviewSettings) further distinct nodes have claimed,
  and then confirms every claim on the task not disproved, as a failed run would have (their refusals taken
  back, their attempts spent). Bounded: at most 2 + QUORUM nodes ever claim the task before it
  fails or is run; other failures spend its attempts as always. Why this shape: a run the referee
  cannot finish is the one case where only nodes can run the task, so the nodes decide, but not
  the two that already disagree with the input; barring them costs nothing (they said they will
  not run it), and counting distinct nodes rather than claims means a colluder gains nothing by
  claiming again.

Who could abuse the undecided path: colluders adding Sybils. To fail the job they need QUORUM
more registered identities, each leased the task before any honest node takes it, each a refusal
(and a stake, where the grid requires one): 2 + QUORUM identities instead of 2, racing honest
nodes for one lease each. A submitter whose input truly fails only late in a task (or who sizes a
task so the referee cannot run it) costs up to QUORUM more node runs and one review budget of the
referee before the job fails as it would have, every claimant's refusal taken back. A loaded
coordinator whose parts time out may call undecided a review a quieter one would have finished:
that only sends the task to more nodes, it never blames anyone.

Paid for a proven failure (repositories.ledger.claim_pay): a node that runs a task whose input
truly fails did the work the submitter's bad input took, and would otherwise do it for nothing,
as often as a hostile submitter likes (a program that raises on the last batch of every shard).
So the claims a failed run of the referee confirmed, and any later claim on that task (believed
because of that run), are paid: each wins one reward with probability (rows before the failing
batch, or inner steps, that the referee's run did ÷ the task's), drawn once and remembered, from
the job's escrow once the job has ended (while it runs, its escrow is owed to its other tasks and
its fee). A claim confirmed with no run that proves it (at the QUORUM after an undecided review,
or by the second-claim rule below) earns nothing: colluders would be paid for a lie. A node can
still claim a failure it found without running the rows before it (an input whose late row is
visibly bad): it is paid what an honest run would be, which the submitter's bad input owes anyway.

A program error (ErrorKind.PROGRAM_ERROR: the submitter's graph raised, its outputs had the wrong
shape, training diverged; node/worker.py reports anything else that fails on the node's side, its
own I/O, as an execution error) is a claim, from a run on any device class. The referee runs on
CPU: its failed run confirms a CUDA run's claim as a CPU run's, but its clean run disproves only a
CPU run's, since a program can fail on one device class alone; for a CUDA claimant it is undecided
(verdict OTHER_DEVICE, per claimant: settle_review), the task settled by other nodes as after an
undecided review, and only claims that clean run cannot disprove count towards QUORUM
(repositories.claim_devices says why, and who could abuse it). Before, a CUDA run's program error
was the node's own execution error, so a program raising late, or only on CUDA, had honest CUDA
nodes run it for nothing. A node from before PROGRAM_ERROR reports the program's raise as its own
execution error, as it always did: it keeps working, unpaid for such tasks. Without claims, a
hostile submitter could have every honest node that takes its task run it almost to the end for
free and be backed off, up to max_attempts nodes a task. Who could abuse it: a node lying that a
good program raised pays what an invalid-input lie costs (the same claim, the same refusal; from
a CUDA run, one review and QUORUM more nodes, as an undecided claim); a submitter whose program
raises now pays for the runs it wasted (claim_pay) and its job ends at the referee's verdict.

Over its time limit, over its memory limit: a node's own report that its run of a task passed the
task's time limit (ErrorKind.TIMEOUT) or its memory limit (OUT_OF_MEMORY) is a claim where the
referee can judge it, counted as any claim here and reviewed by measuring the referee's run against
that limit (repositories.limit_claims says which reports, how they are judged, and who could abuse
them).

Tasks of kinds that do not review claims (noop) keep the second-claim rule. A training round that
closes while one of its tasks is contested cancels it: its review is never run.

One node claiming again. Counting distinct nodes left a grid with ONE eligible node looping: a
task whose input truly fails (or whose program raises late) went back to that node after every
avoid window (--avoid-failed-node-ms, 30 s) and its backoff, to be run and refused again, unpaid,
until the job's deadline; the job never failed. So a node's claim on a task it claimed before (it
was leased the task again, so at least the avoid window later, other nodes having had the first
chance at it) counts too, bounded by what can settle it:
- a reviewed kind, no verdict yet: the task goes to review, as a second node's claim sends it
  (no second refusal: one per task). The verdict settles it as for two claimants: raised, the
  job fails at once and the node is paid by its draw; clean, the claim is disproved (a CUDA
  run's program error, timeout or out-of-memory: undecided, as next); undecided, the node is barred from the
  task and other nodes settle it; a failed run that does not end the
  task (the referee's own limit) confirms the node's claim, and its later claims are believed
  (each spends an attempt, as a second node's would).
- nothing left to review it (a kind the referee does not review, or the referee's clean run
  disproved it): the node's own failure, as an execution error (one attempt spent, a failure and
  its backoff, no refusal), so the task's attempts bound it. Never another review: a task is
  reviewed at most once whoever claims it, so no claimant can loop the referee.
Who could abuse it: a single lying identity can now send a reviewed task to review alone. It pays
one refusal (kept when the review disproves it: a rejection, a failure's backoff, its streak
reset) where two colluders pay one each, but it must be leased the same task twice, at least the
avoid window and its backoff apart, and on a busy grid another node usually takes the task in
that window (the window is theirs), so it mostly cannot. Two colluding identities could always
send a task to review, and either way the referee spends at most one review budget per task. A node
refusing a task the referee ran cleanly, or a noop task, again spends its attempts as failing it
(an execution error, a lease left to expire) always could: no new power, and each one costs it a
failure. An honest node whose run fails the same way twice (a truly bad input on a one-node grid)
gets its job settled: the referee's failed run ends it and pays the node; on noop its attempts do.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, case, insert, or_, select, update

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.repositories import claim_devices as devices
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.nodes import node_failed

claims = s.failure_claims
CLEAN, FAILED, UNDECIDED = "clean", "failed", "undecided"  # verdicts of a review
# a claim's verdict when the referee's run was clean but cannot disprove it (a CUDA run's program
# error, timeout or out-of-memory: claim_devices): undecided for that claim, settled by other nodes
OTHER_DEVICE = "other_device"
DISPROVED = "disproved"  # the job event of a result that finishes a task whose review was undecided
VERDICTS = (CLEAN, FAILED, UNDECIDED)
CONTESTED = s.OPEN_TASK_STATES[2]  # the state of a task whose claims the referee is about to review


@dataclass(frozen=True)
class Claim:
    confirmed: bool  # another node made a claim on this task too
    spends: int  # attempts of the task it spends now
    review: bool = False  # the task goes to review: the referee runs it before anyone is believed
    note: str = ""  # why it counts as it does, when that is not the plain rule (for the job's events)
    paid: bool = False  # believed because the referee's run failed: drawn for pay (ledger.claim_pay)
    own: bool = False  # a repeated claim no review can settle: the node's own failure (an execution error's cost)


def claim(
    conn: Connection, task_id: str, node: str, kind: str, now_ms: int, *, quorum: int, reviewed: bool = False
) -> Claim:
    """Record `node`'s workload-error claim on the task; say whether it counts, and how much.
    quorum: QUORUM, further distinct nodes whose claims confirm after an undecided review
    (--undecided-quorum); reviewed: the referee can run this task, so a second claim sends it to review."""
    rows = conn.execute(
        select(claims.c.node, claims.c.confirmed, claims.c.verdict).where(claims.c.task_id == task_id)
    ).all()
    mine = any(r.node == node for r in rows)
    others = [r for r in rows if r.node != node]
    ran_clean = any(r.verdict in (CLEAN, OTHER_DEVICE) for r in rows)  # the referee ran the task cleanly
    # this claim is one that clean run disproves (any claim but a CUDA run's DEVICE_BOUND ones)
    disproved = ran_clean and not devices.unprovable(kind, _claim_device(conn, task_id, node))
    if not mine:  # one disproved at once is marked so: it never counts towards a quorum (below)
        values = dict(task_id=task_id, node=node, kind=kind, claimed_ms=now_ms, confirmed=False)
        conn.execute(insert(claims).values(**values, verdict=CLEAN if disproved else None))
    undecided = (ran_clean and not disproved) or any(r.verdict in (UNDECIDED, OTHER_DEVICE) for r in rows)
    # believed: another node's claim confirmed it, or the referee's failed run confirmed this node's own
    believed = any(r.confirmed and (r.node != node or r.verdict == FAILED) for r in rows)
    note = ""
    if undecided and not disproved and not believed:
        # settled by more distinct nodes: the claims made since the review that it did not disprove
        # (this one included); a claimant the review judged never adds to them (never leased it again)
        reviewed_by = {r.node for r in rows if r.verdict is not None}
        since = ({r.node for r in rows if r.verdict is None} | {node}) - reviewed_by
        _undecided(conn, task_id, now_ms)  # after a clean review, the first claim it cannot disprove
        if len(since) < quorum:
            if not mine:
                _refuse(conn, node, now_ms)
            return Claim(confirmed=False, spends=0, note=f"{len(since)} of {quorum} since an undecided review")
        note = f"confirmed by {len(since)} more nodes after the referee could not decide"
    # a second claim, by another node or by the same one leased the task again, goes to review (once)
    review = reviewed and (bool(others) or mine) and not ran_clean and not undecided and not believed
    if mine and not review and (not others or disproved):
        # nothing can settle it but the node itself: its refusal again is its own failure (see above)
        why = "disproved by the referee's run" if disproved else "claimed before by this node alone"
        return Claim(confirmed=True, spends=1, note=f"{why}: the node's own failure", own=True)
    if not others or disproved or review:
        if not mine:  # counted once per task, so a retry of an honest claim costs nothing more
            _refuse(conn, node, now_ms)
        return Claim(confirmed=False, spends=0, review=review)
    earlier = _confirm(conn, task_id, but=node)
    if not earlier and not mine:
        conn.execute(update(claims).where(claims.c.task_id == task_id, claims.c.node == node).values(confirmed=True))
    proof = claim_pay.referee_failed(conn, task_id)
    if proof is not None:  # believed because the referee's run failed: paid for its work as those claimants are
        claim_pay.entitle(conn, task_id, [node], *proof, now_ms)
    return Claim(confirmed=True, spends=1 + earlier, note=note, paid=proof is not None)


def _claim_device(conn: Connection, task_id: str, node: str) -> str:
    return devices.device_of(conn, devices.task_device(conn, task_id), node)


def _undecided(conn: Connection, task_id: str, now_ms: int) -> None:
    """Mark the task undecided (tasks.undecided_ms), if it is not yet: never leased to a claimant again."""
    t = s.tasks.c
    conn.execute(update(s.tasks).where(t.task_id == task_id, t.undecided_ms.is_(None)).values(undecided_ms=now_ms))


def settle_review(conn: Connection, task_id: str, verdict: str) -> int:
    """Record the referee's verdict on the task's claims (CLEAN, FAILED or UNDECIDED); the
    attempts the claims spend now: only a failed run spends any (a clean one proved them false,
    an undecided one proved nothing, and their reporters keep their refusals either way). Clean, per
    claimant: a claim such a run cannot disprove (claim_devices.standing) is OTHER_DEVICE instead."""
    if verdict not in VERDICTS:
        raise ValueError(f"not a verdict: {verdict!r}")
    spends = _confirm(conn, task_id, but="") if verdict == FAILED else 0
    conn.execute(update(claims).where(claims.c.task_id == task_id).values(verdict=verdict))
    if verdict == CLEAN:  # per claimant: a CUDA run's DEVICE_BOUND claim is undecided (claim_devices)
        standing = devices.standing(conn, task_id)
        if standing:
            where = (claims.c.task_id == task_id, claims.c.node.in_(standing))
            conn.execute(update(claims).where(*where).values(verdict=OTHER_DEVICE))
    return spends


def unproven(conn: Connection, task_id: str) -> list[str]:
    """The claimants the referee's clean run left undecided (OTHER_DEVICE), in address order."""
    c = claims.c
    where = (c.task_id == task_id, c.verdict == OTHER_DEVICE)
    return [str(n) for n in conn.execute(select(c.node).where(*where).order_by(c.node)).scalars()]


def disproved(conn: Connection, job_id: str, task_id: str, task_index: int, node: str, now_ms: int) -> None:
    """A result from `node` was accepted for a task whose review was undecided: record, as a job
    event, that it disproves the claims. Nothing more counts against the claimants (see above)."""
    everyone = claimants(conn, task_id)
    n = len([c for c in everyone if c != node])
    whose = "one claimant's own" if node in everyone else "a non-claimant's"  # barred from it: not seen
    claimed = f"{n} claimant's claim" if n == 1 else f"{n} claimants' claims"
    message = (
        f"{claimed} disproved by {whose} result: accepted (and checked as any result is) after the referee "
        f"could not decide; each claimant keeps the refusal it already holds, nothing more"
    )
    append_event(conn, job_id, DISPROVED, now_ms, task_index=task_index, node=node, message=message)


def claimants(conn: Connection, task_id: str) -> list[str]:
    rows = conn.execute(select(claims.c.node).where(claims.c.task_id == task_id).order_by(claims.c.node)).all()
    return [str(r.node) for r in rows]


def kind_of(conn: Connection, task_id: str) -> str:
    """What the task's claims say (the first one's kind: invalid_input, unsafe_input or program_error)."""
    c = claims.c
    first = conn.execute(select(c.kind).where(c.task_id == task_id).order_by(c.claimed_ms, c.node).limit(1)).scalar()
    return str(first or "invalid_input")


def _refuse(conn: Connection, node: str, now_ms: int) -> None:
    node_failed(conn, node, now_ms, rejection=True)
    conn.execute(update(s.reputation).where(s.reputation.c.address == node).values(consecutive_valid=0))


def _confirm(conn: Connection, task_id: str, but: str) -> int:
    """Confirm the task's claims if any is unconfirmed, and take back the refusals of those
    reporters (except `but`, whose claim is being made now): the rejection, and the failure it
    counted (what backs a node off: nodes.node_failed); how many that were."""
    standing = (claims.c.task_id == task_id, or_(claims.c.verdict.is_(None), claims.c.verdict != CLEAN))
    rows = conn.execute(select(claims.c.node, claims.c.confirmed).where(*standing)).all()
    unconfirmed = sorted({r.node for r in rows if not r.confirmed and r.node != but})
    if unconfirmed:  # a claim the referee's clean run disproved is never confirmed: its refusal stays
        conn.execute(update(claims).where(*standing).values(confirmed=True))
        n = s.nodes.c
        conn.execute(
            update(s.nodes)
            .where(n.address.in_(unconfirmed))
            .values(
                rejections=case((n.rejections > 0, n.rejections - 1), else_=0),
                failures=case((n.failures > 0, n.failures - 1), else_=0),
                consecutive_failures=case((n.consecutive_failures > 0, n.consecutive_failures - 1), else_=0),
            )
        )
    return len(unconfirmed)
