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
from coordinator.errors import Forged
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


def test_a_kept_result_handed_in_before_the_first_beat_is_accepted_and_one_after_is_refused(
    state: Store,
) -> None:
    """The daemon hands in what its previous run kept before its heartbeats start (node.agent):
    that result meets its lease held and is accepted. A result that came after the release
    would be refused as of a lease that ended, like one after an expiry: nothing is credited,
    and the task, reissued, is done once."""
    finished, running = setup(state)
    restart(state, 100)
    acceptance = ResultAcceptance(state.engine)
    assert acceptance.accept_result(A, receipt(finished.task_id, 1), OUTPUT, None, 150) == (JOB, False)
    assert beat(state, [], 200) == [JOB]  # only the lease whose task was still running
    assert state.tasks.get_task(finished.task_id).state == "done"
    with pytest.raises(Forged, match="does not hold that lease"):
        acceptance.accept_result(A, receipt(running.task_id, 1), OUTPUT, None, 250)
    assert state.tasks.get_task(running.task_id).state == "pending"
    (again,), _ = state.tasks.lease_tasks(B, 1, 300, TIMING)
    assert (again.task_id, again.attempt) == (running.task_id, 2)
    assert acceptance.accept_result(B, receipt(running.task_id, 2), OUTPUT, None, 350) == (JOB, True)
    assert state.nodes.get_node(A).completed == 1  # type: ignore[union-attr]
