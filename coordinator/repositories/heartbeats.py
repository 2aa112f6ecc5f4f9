"""Heartbeats, many nodes' in one transaction: the leases each lists are kept alive, the nodes
marked seen, and the leases a restarted node left behind reissued.

Leases left behind. A node daemon that is killed and started again registers anew (a new
session) and holds none of the leases its previous run held. Those leases are reissued at
the new session's heartbeat, as their expiry would reissue them a lease TTL later: the
leases of that node granted before the session opened (sessions.started_ms) that the
heartbeat does not list. Only those: a lease granted in this session may be missing from a
heartbeat sent before the grant reached the node (one in flight while a long poll is
answered), and must live. The daemon hands in the results an earlier run kept on disk
before its first heartbeat (node.agent), so such a result meets its lease still held; one that
comes after the release is still taken while no other node's result is in (tasks.lost_lease).

It counts as an expiry does: a failure of the node (and its backoff) and one of the task's
attempts; a node cannot shed leases it would rather not finish more cheaply by registering
again than by falling silent. Only sessions opened within a lease TTL are looked at: a lease
granted before and still held past that has been renewed since by a heartbeat that listed
it (the same key run by a second daemon), and it stays. The session is the one the
heartbeat's token opened (api.auth), read from the database, so every replica agrees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, case, select, update

from coordinator.config import LeaseTiming
from coordinator.db import schema as s
from coordinator.repositories.locks import lock_free, lock_in_order
from tensorgrid.types import ErrorKind, TaskError

# (node address, its active leases, draining, hash of the session token it came with or "")
Heartbeat = tuple[str, list[tuple[str, int]], bool, str]
# Per heartbeat: the leases it lists that the node no longer holds (revoked), and the jobs of the
# leases it left behind that were reissued (their watchers and idle long polls are to be told).
BeatAnswer = tuple[list[tuple[str, int]], list[str]]
Fail = Callable[[Connection, Any, TaskError, int], bool]  # a lease ended without a result (row, why, now): reissued?
LEFT_BEHIND = TaskError(ErrorKind.TIMEOUT, "the node restarted: its new session's heartbeat no longer holds this lease")


def heartbeat_in(
    conn: Connection, beats: list[Heartbeat], now_ms: int, timing: LeaseTiming, fail: Fail
) -> list[BeatAnswer]:
    """One statement marks the nodes seen (two when some are draining), one more per lease a
    heartbeat lists, one looks for leases left behind. With thousands of nodes each
    heartbeating every few seconds, a transaction per heartbeat was most of an idle
    coordinator's database work (benchmarks.fleet)."""
    revoked: list[list[tuple[str, int]]] = [[] for _ in beats]
    # A node's draining flag is the one its last heartbeat in the batch says.
    flags = {address: draining for address, _, draining, _ in beats}
    # Leases first, then nodes: the order results and the reaper lock them in (the
    # other order deadlocked with both at 5,000 nodes).
    cap = s.tasks.c.leased_ms + s.tasks.c.time_limit_ms + timing.grace_ms  # never past compute limit + grace
    for i, (address, active, _, _) in enumerate(beats):
        for task_id, attempt in active:
            res = conn.execute(
                update(s.tasks)
                .where(
                    s.tasks.c.task_id == task_id,
                    s.tasks.c.attempt == attempt,
                    s.tasks.c.node == address,
                    s.tasks.c.state == "leased",
                )
                .values(deadline_ms=_least(now_ms + timing.ttl_ms, cap))
            )
            if res.rowcount == 0:
                revoked[i].append((task_id, attempt))
    _keep_finished(conn, beats, revoked)
    behind = _left_behind(conn, beats, now_ms, timing)
    # The nodes' rows locked in address order (see lock_in_order): batches in two orders
    # deadlocked at 5,000 nodes, the reaper failing every time. A node starting to drain
    # must be recorded: its rows are waited for, and so are those of nodes whose leases left
    # behind are reissued (with their jobs' rows). A beat that only says "alive" skips a
    # row another transaction holds (a result of that node being accepted, the reaper):
    # a batch of hundreds of beats waiting on one such row, holding the rows it had
    # already locked, stalled those nodes' results behind it, and with them the database
    # threads, in convoys of seconds at 5,000 nodes (benchmarks.fleet). A node so
    # skipped is seen at its next beat (ACTIVE_MS spans three idle intervals).
    draining = sorted(a for a, d in flags.items() if d)
    lock_in_order(conn, {*draining, *(r.node for r in behind)}, {r.job_id for r in behind})
    reissued: dict[str, list[str]] = {}
    for row in behind:
        fail(conn, row, LEFT_BEHIND, now_ms)
        reissued.setdefault(row.node, []).append(row.job_id)
    alive = lock_free(conn, [a for a, d in flags.items() if not d])
    for flag, addresses in ((False, alive), (True, draining)):
        if addresses:
            beat = update(s.nodes).where(s.nodes.c.address.in_(addresses))
            conn.execute(beat.values(last_seen_ms=now_ms, draining=flag))
    return [(revoked[i], reissued.pop(address, [])) for i, (address, _, _, _) in enumerate(beats)]


def _left_behind(conn: Connection, beats: list[Heartbeat], now_ms: int, timing: LeaseTiming) -> list[Any]:
    """The task rows of leases left behind by a restart (see the module's doc), locked; a row
    another transaction holds (its result being accepted) is skipped, and looked at again by
    the session's next heartbeat if it is still leased."""
    listed: dict[str, set[tuple[str, int]]] = {}
    owner: dict[str, str] = {}  # session → the node its beats came from (the token's, api.auth)
    for address, active, _, session in beats:
        if session:  # every beat of the session in this batch: a lease any of them lists stays
            listed.setdefault(session, set()).update(active)
            owner[session] = address
    if not listed:
        return []
    t, se = s.tasks, s.sessions
    rows = conn.execute(
        select(t, se.c.token_hash.label("session_hash"))
        .join(se, se.c.address == t.c.node)
        .where(
            se.c.token_hash.in_(sorted(listed)),
            se.c.started_ms >= now_ms - timing.ttl_ms,  # NULL (opened before revision 0006): never
            t.c.state == "leased",
            t.c.leased_ms < se.c.started_ms,
        )
        .order_by(t.c.node, t.c.task_id)
        .with_for_update(of=t, skip_locked=True)
    ).all()
    return [r for r in rows if r.node == owner[r.session_hash] and (r.task_id, r.attempt) not in listed[r.session_hash]]


def _keep_finished(conn: Connection, beats: list[Heartbeat], revoked: list[list[tuple[str, int]]]) -> None:
    """Take out of `revoked` the leases whose task this very node finished at this very attempt:
    a beat sent while its result was on the way reaches the coordinator after the result's
    commit. That lease ended, but was not taken back: a node told "revoked" stops handing in
    that result again, and an answer it lost (a replica died after the commit) is then never
    repeated, nor the checkpoints an audit asks for revealed."""
    missed = {task_id for lost in revoked for task_id, _ in lost}
    if not missed:
        return
    t = s.tasks
    done = {
        (row.task_id, row.attempt, row.node)
        for row in conn.execute(
            select(t.c.task_id, t.c.attempt, t.c.node).where(t.c.task_id.in_(sorted(missed)), t.c.state == "done")
        )
    }
    for i, (address, _, _, _) in enumerate(beats):
        revoked[i] = [(task_id, attempt) for task_id, attempt in revoked[i] if (task_id, attempt, address) not in done]


def _least(a: int, b: Any) -> Any:
    return case((b < a, b), else_=a)
