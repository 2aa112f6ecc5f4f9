"""Leases a restarted node left behind are reissued at its new session's heartbeat
(repositories.heartbeats), on SQLite and PostgreSQL: only leases granted before the session
opened and not listed by its heartbeats, counted as an expiry is; never a lease granted in the
session (a heartbeat sent before the grant does not list it), nor one another session keeps
alive, nor another node's."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from coordinator.config import LeaseTiming
from coordinator.db import schema as s
from coordinator.errors import Forged, Rejected
from coordinator.repositories.store import Store
from coordinator.services.acceptance import ResultAcceptance
from tensorgrid.spec import task_id_for
from tensorgrid.types import BlobRef, Lease
from tests.unit.coordinator.test_storage import CPU, JOB, A, B, add_nodes, make_job, receipt

TIMING = LeaseTiming(ttl_ms=1000, grace_ms=500)
FIRST, NEW = f"{0:064x}", "f" * 64  # A's session token hashes: its first run's (add_nodes), its restarted run's
OUTPUT = BlobRef("ff" * 32, 3)


@pytest.fixture
def state(db_url: str):  # type: ignore[no-untyped-def]
    s = Store(db_url)
    yield s
    s.close()


def restart(state: Store, at_ms: int, session: str = NEW) -> None:
    """A's daemon starts again: it registers a new session at at_ms."""
    state.nodes.register_node(A, CPU, session, at_ms, 10**9, f"nonce-{session}-{at_ms}")


def beat(state: Store, held: list[Lease], now_ms: int, session: str = NEW, node: str = A) -> list[str]:
    """One heartbeat listing `held`; the jobs of the leases it reissued as left behind."""
    ((revoked, reissued),) = state.tasks.heartbeat_many(
        [(node, [(x.task_id, x.attempt) for x in held], False, session)], now_ms, TIMING
    )
    assert revoked == []
    return reissued


def _all(state: Store) -> list[str]:
    return [task_id_for(JOB, i) for i in range(2)]


def setup(state: Store) -> list[Lease]:
    add_nodes(state, (A, CPU), (B, CPU))  # A's session FIRST opens at 0
    make_job(state, n=2)
    leases, _ = state.tasks.lease_tasks(A, 2, 10, TIMING)
    assert len(leases) == 2
    return leases


def test_leases_granted_before_the_new_session_and_not_listed_are_reissued_as_an_expiry(state: Store) -> None:
    setup(state)
    restart(state, 100)
    assert beat(state, [], 200) == [JOB, JOB]
    tasks = [state.tasks.get_task(t) for t in _all(state)]
    assert [(t.state, t.node) for t in tasks] == [("pending", None)] * 2
    node = state.nodes.get_node(A)
    assert node is not None and node.failures == 2 and node.backoff_until_ms > 200  # as two expiries
    events = [e for e in state.jobs.events_after(JOB, 0) if e.kind == "reissued"]
    assert len(events) == 2 and all("restarted" in e.message and e.node == A for e in events)
    assert beat(state, [], 300) == []  # nothing twice


def test_a_lease_granted_in_the_session_is_kept_though_a_beat_sent_before_the_grant_misses_it(
    state: Store,
) -> None:
    setup(state)
    for t in _all(state):  # the first run's leases ended (handed in or reported)
        state.tasks.reject_task_result(A, t, 1, "test", 20)
    restart(state, 100_000)  # past the backoff and the failed node's avoidance
    fresh, _ = state.tasks.lease_tasks(A, 1, 100_050, TIMING)
    assert len(fresh) == 1
    assert beat(state, [], 100_060) == []  # sent before the grant reached the node
    assert state.tasks.get_task(fresh[0].task_id).state == "leased"


def test_a_lease_the_new_session_lists_is_kept(state: Store) -> None:
    # A daemon that registers again while running (its session ended) still holds its leases.
    leases = setup(state)
    restart(state, 100)
    assert beat(state, leases[:1], 200) == [JOB]
    assert state.tasks.get_task(leases[0].task_id).state == "leased"
    assert state.tasks.get_task(leases[1].task_id).state == "pending"


def test_nothing_is_released_without_a_session_for_another_node_or_for_an_old_session(state: Store) -> None:
    leases = setup(state)
    restart(state, 100)
    assert beat(state, [], 200, session="") == []  # no session known (e.g. a direct call)
    assert beat(state, [], 200, session=NEW, node=B) == []  # A's session on B's beat releases nothing
    assert beat(state, [], 200, session=FIRST) == []  # A's first session: the leases are its own
    with state.engine.begin() as conn:  # a session opened before revision 0006 has no start
        conn.execute(update(s.sessions).where(s.sessions.c.token_hash == NEW).values(started_ms=None))
    assert beat(state, [], 200) == []
    assert all(state.tasks.get_task(x.task_id).state == "leased" for x in leases)


def test_a_lease_another_session_keeps_alive_is_not_taken_past_one_ttl(state: Store) -> None:
    # The same key run by a second daemon: the first one's leases are taken only within a TTL of
    # the second's start; after that, a lease still held has been renewed by its own daemon.
    leases = setup(state)
    restart(state, 100)
    assert beat(state, leases, 900, session=FIRST) == []  # the first daemon renews its leases
    assert beat(state, [], 100 + TIMING.ttl_ms + 1) == []
    assert all(state.tasks.get_task(x.task_id).state == "leased" for x in leases)


def test_a_kept_result_is_accepted_before_the_first_beat_and_after_it_while_nobody_else_handed_one_in(
    state: Store,
) -> None:
    """The daemon hands in what its previous run kept before its heartbeats start (node.agent):
    that result meets its lease held. One that comes after the release, the task pending still at
    its attempt, is accepted as its lease's would have been (tasks.lost_lease), credited once."""
    finished, running = setup(state)
    restart(state, 100)
    acceptance = ResultAcceptance(state.engine)
    assert acceptance.accept_result(A, receipt(finished.task_id, 1), OUTPUT, None, 150) == (JOB, False)
    assert beat(state, [], 200) == [JOB]  # only the lease whose task was still running
    assert state.tasks.get_task(running.task_id).state == "pending"
    assert acceptance.accept_result(A, receipt(running.task_id, 1), OUTPUT, None, 250) == (JOB, True)
    task = state.tasks.get_task(running.task_id)
    assert (task.state, task.node, task.attempt) == ("done", A, 1)
    assert state.nodes.get_node(A).completed == 2  # type: ignore[union-attr]
    with pytest.raises(Rejected):  # not twice
        acceptance.accept_result(A, receipt(running.task_id, 1), OUTPUT, None, 260)
    assert state.tasks.lease_tasks(B, 1, 300, TIMING)[0] == []


def _released_and_leased_to_b(state: Store) -> tuple[ResultAcceptance, Lease]:
    """A's second lease, left behind by its restart, leased again to B (attempt 2)."""
    _, running = setup(state)
    restart(state, 100)
    assert beat(state, [], 200) == [JOB, JOB]
    again = [x for x in state.tasks.lease_tasks(B, 2, 300, TIMING)[0] if x.task_id == running.task_id]
    assert [x.attempt for x in again] == [2]
    return ResultAcceptance(state.engine), again[0]


def test_a_late_result_of_a_task_leased_again_and_not_yet_handed_in_is_accepted_and_the_new_lease_ends_unblamed(
    state: Store,
) -> None:
    acceptance, b_lease = _released_and_leased_to_b(state)
    assert acceptance.accept_result(A, receipt(b_lease.task_id, 1), OUTPUT, None, 400) == (JOB, False)
    task = state.tasks.get_task(b_lease.task_id)
    assert (task.state, task.node, task.attempt) == ("done", A, 1)
    ((revoked, _),) = state.tasks.heartbeat_many([(B, [(b_lease.task_id, 2)], False, "")], 450, TIMING)
    assert revoked == [(b_lease.task_id, 2)]  # B hears its lease is over and stops
    with pytest.raises(Forged):  # B's result is refused, not held against B, nothing paid twice
        acceptance.accept_result(B, receipt(b_lease.task_id, 2), OUTPUT, None, 500)
    state.tasks.reject_task_result(B, b_lease.task_id, 2, "the lease is over", 500, forged=True)
    b = state.nodes.get_node(B)
    assert b is not None and b.failures == 0 and b.completed == 0
    assert state.nodes.get_node(A).completed == 1  # type: ignore[union-attr]


def test_a_late_result_never_overrides_another_nodes_accepted_one_nor_a_result_taken_back(state: Store) -> None:
    acceptance, b_lease = _released_and_leased_to_b(state)
    assert acceptance.accept_result(B, receipt(b_lease.task_id, 2), OUTPUT, None, 400) == (JOB, False)
    with pytest.raises(Forged, match="does not hold that lease"):  # B's result is in: A's old one is too late
        acceptance.accept_result(A, receipt(b_lease.task_id, 1), OUTPUT, None, 450)
    assert state.tasks.get_task(b_lease.task_id).node == B
    with pytest.raises(Rejected):  # nor another attempt than the one A held, nor B's word for A's
        acceptance.accept_result(A, receipt(_all(state)[0], 2), OUTPUT, None, 450)
    with pytest.raises(Rejected):
        acceptance.accept_result(B, receipt(_all(state)[0], 1), OUTPUT, None, 450)
    # a lease that ended by a refusal of its node's result is not reopened by another result
    first = state.tasks.get_task(_all(state)[0])
    assert (first.state, first.node, first.attempt) == ("leased", B, 2)  # B took both
    state.tasks.reject_task_result(B, first.task_id, 2, "bad bytes", 470)
    with pytest.raises(Rejected):
        acceptance.accept_result(B, receipt(first.task_id, 2), OUTPUT, None, 480)
    assert state.tasks.get_task(first.task_id).state == "pending"
    # B's accepted result caught by a check: pending again at its attempt, away from B. B's
    # result for that attempt is on record: B may not hand another one in for it.
    with state.engine.begin() as conn:
        conn.execute(
            update(s.tasks)
            .where(s.tasks.c.task_id == b_lease.task_id)
            .values(state="pending", node=None, output_sha=None, output_size=None, last_failed_node=B)
        )
    with pytest.raises(Rejected):
        acceptance.accept_result(B, receipt(b_lease.task_id, 2), BlobRef("aa" * 32, 3), None, 500)
    assert state.tasks.get_task(b_lease.task_id).state == "pending"
