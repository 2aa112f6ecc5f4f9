"""The coordinator's state on SQLite and PostgreSQL: jobs, leases, results, failures."""

from __future__ import annotations

import pytest

from coordinator.config import LeaseTiming
from coordinator.db import kept
from coordinator.errors import NotFound, PermissionDenied, Rejected
from coordinator.repositories.jobs import NewTask
from coordinator.repositories.leasing import HOLDING_RETRY_MS
from coordinator.repositories.nodes import backoff_ms
from coordinator.repositories.store import Store
from coordinator.services.acceptance import ResultAcceptance, ResultItem
from tensorgrid.spec import task_id_for
from tensorgrid.types import BlobRef, Capabilities, ErrorKind, JobState, Receipt, TaskError
from tests.jobs import new_job

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
GPU = Capabilities(device_kind="cuda", memory_bytes=16 << 30, cpu_cores=8)
TIMING = LeaseTiming(ttl_ms=1000, grace_ms=500)
SUBMITTER = "0x" + "11" * 20
A = "0x" + "aa" * 20
B = "0x" + "bb" * 20
JOB = "ab" * 32


@pytest.fixture
def state(db_url: str):  # type: ignore[no-untyped-def]
    s = Store(db_url)
    yield s
    s.close()


def add_nodes(state: Store, *nodes: tuple[str, Capabilities]) -> None:
    for i, (addr, caps) in enumerate(nodes):
        state.nodes.register_node(addr, caps, f"{i:064x}", 0, 10**9, f"nonce-{addr}")


def make_job(
    state: Store,
    n: int = 3,
    device: str = "any",
    job_id: str = JOB,
    max_attempts: int = 3,
    min_memory: int = 0,
    *,
    model: BlobRef | None = None,
    task_input: BlobRef | None = None,
    settings_json: str = "{}",
) -> None:
    job = new_job(
        job_id,
        submitter=SUBMITTER,
        device=device,
        min_memory_bytes=min_memory,
        model=model,
        settings_json=settings_json,
        max_attempts=max_attempts,
    )
    tasks = [NewTask(i, task_id_for(job_id, i), task_input or BlobRef("ee" * 32, 0), 1) for i in range(n)]
    state.jobs.create_job(job, tasks, now_ms=1)


def receipt(task_id: str, attempt: int) -> Receipt:
    return Receipt(JOB, task_id, attempt, "ee" * 32, "ff" * 32, signature=b"s")


def test_create_job_is_idempotent(state: Store) -> None:
    make_job(state)
    make_job(state)
    job = state.jobs.get_job(JOB)
    assert job.tasks_total == 3 and job.state == JobState.QUEUED
    assert [e.kind for e in state.jobs.events_after(JOB, 0)] == ["submitted"]


def test_lease_complete_and_finish(state: Store) -> None:
    add_nodes(state, (A, CPU))
    make_job(state, n=2)
    leases, _ = state.tasks.lease_tasks(A, 5, 10, TIMING)
    assert [lz.attempt for lz in leases] == [1, 1]
    assert state.jobs.get_job(JOB).state == JobState.RUNNING
    assert ResultAcceptance(state.engine).accept_result(
        A, receipt(leases[0].task_id, 1), BlobRef("ff" * 32, 3), None, 20
    ) == (JOB, False)
    assert ResultAcceptance(state.engine).accept_result(
        A, receipt(leases[1].task_id, 1), BlobRef("ff" * 32, 3), None, 20
    ) == (JOB, True)
    assert state.jobs.jobs_to_aggregate() == [JOB]
    assert len(state.jobs.task_outputs(JOB)) == 2
    done = state.jobs.finish_job(JOB, BlobRef("12" * 32, 9), "", 30)
    assert done.state == JobState.SUCCEEDED and done.result == BlobRef("12" * 32, 9)
    assert state.jobs.jobs_to_aggregate() == []
    assert state.nodes.get_node(A).completed == 2  # type: ignore[union-attr]


def test_a_job_without_tasks_is_never_left_to_assemble(state: Store) -> None:
    # An endpoint has no tasks: the sweep for jobs left complete must not pick it up every pass.
    make_job(state, n=0)
    make_job(state, n=1, job_id="ab" * 32)
    assert state.jobs.get_job(JOB).tasks_total == 0
    assert state.jobs.jobs_to_aggregate() == []


def test_a_lease_rolled_back_does_not_leave_its_job_marked_started(state: Store) -> None:
    # The process caches jobs it has seen started; a start that rolled back must not be
    # cached, or the job would stay queued (its escrow never locked) while its tasks run.
    add_nodes(state, (A, CPU))
    make_job(state, n=2)
    with pytest.raises(RuntimeError, match="crash"), kept.begin(state.engine) as conn:
        assert len(state.tasks.lease_in(conn, [(A, 1)], 10, TIMING)[0][0]) == 1  # type: ignore[index]
        raise RuntimeError("crash before commit")
    assert state.jobs.get_job(JOB).state == JobState.QUEUED
    (lease,), _ = state.tasks.lease_tasks(A, 1, 20, TIMING)
    assert state.jobs.get_job(JOB).state == JobState.RUNNING
    assert [e.kind for e in state.jobs.events_after(JOB, 0)].count("running") == 1


def test_result_for_someone_elses_lease_and_replay_are_rejected(state: Store) -> None:
    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=1)
    (lease,), _ = state.tasks.lease_tasks(A, 1, 10, TIMING)
    with pytest.raises(Rejected, match="does not hold"):
        ResultAcceptance(state.engine).accept_result(B, receipt(lease.task_id, 1), BlobRef("ff" * 32, 3), None, 20)
    ResultAcceptance(state.engine).accept_result(A, receipt(lease.task_id, 1), BlobRef("ff" * 32, 3), None, 20)
    with pytest.raises(Rejected):
        ResultAcceptance(state.engine).accept_result(A, receipt(lease.task_id, 1), BlobRef("ff" * 32, 3), None, 21)
    assert state.jobs.get_job(JOB).tasks_done == 1


def test_expired_lease_is_reissued_to_another_node(state: Store) -> None:
    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=1)
    (lease,), _ = state.tasks.lease_tasks(A, 1, 10, TIMING)
    assert state.tasks.reap_expired(10 + TIMING.ttl_ms - 1) == 0
    assert state.tasks.reap_expired(10 + TIMING.ttl_ms + 1) == 1
    (again,), _ = state.tasks.lease_tasks(B, 1, 2000, TIMING)
    assert again.task_id == lease.task_id and again.attempt == 2
    acceptance = ResultAcceptance(state.engine)
    acceptance.accept_result(B, receipt(lease.task_id, 2), BlobRef("ff" * 32, 3), None, 2100)
    with pytest.raises(Rejected):  # after B's result: too late (before it, taken: test_restarts)
        acceptance.accept_result(A, receipt(lease.task_id, 1), BlobRef("ff" * 32, 3), None, 2200)
    node_a = state.nodes.get_node(A)
    assert node_a is not None and node_a.failures == 1 and node_a.backoff_until_ms > 1000


def test_heartbeat_extends_but_caps_and_revokes(state: Store) -> None:
    add_nodes(state, (A, CPU))
    make_job(state, n=1)
    (lease,), _ = state.tasks.lease_tasks(A, 1, 0, TIMING)
    assert state.tasks.heartbeat(A, [(lease.task_id, 1)], False, 900, TIMING) == []
    assert state.tasks.reap_expired(1500) == 0  # extended to 1900
    assert state.tasks.heartbeat(A, [(lease.task_id, 1), ("00" * 32, 1)], False, 1800, TIMING) == [("00" * 32, 1)]
    # never past leased + time limit (5000) + grace (500), however often it beats
    state.tasks.heartbeat(A, [(lease.task_id, 1)], False, 5400, TIMING)
    assert state.tasks.reap_expired(5501) == 1


def test_heartbeats_of_many_nodes_in_one_transaction(state: Store) -> None:
    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=1)
    (lease,), _ = state.tasks.lease_tasks(A, 1, 0, TIMING)
    held, stolen = (lease.task_id, 1), (lease.task_id, 1)
    beats = [(A, [held], False, ""), (B, [stolen], True, ""), (A, [], False, "")]
    revoked = [r for r, _ in state.tasks.heartbeat_many(beats, 900, TIMING)]
    assert revoked == [[], [stolen], []]  # B never held A's lease
    a, b = state.nodes.get_node(A), state.nodes.get_node(B)
    assert a is not None and b is not None
    assert (a.last_seen_ms, a.draining, b.last_seen_ms, b.draining) == (900, False, 900, True)
    assert state.tasks.reap_expired(1500) == 0  # A's beat extended its lease to 1900


def test_a_beat_that_arrives_after_its_nodes_result_does_not_revoke_that_lease(state: Store) -> None:
    """The beat was sent while the result was on its way: the lease ended in that node's own
    result, so it is not said to be revoked (the node would stop repeating a lost answer). The
    same task's lease is revoked for any other node or attempt."""
    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=1)
    (lease,), _ = state.tasks.lease_tasks(A, 1, 0, TIMING)
    ResultAcceptance(state.engine).accept_result(A, receipt(lease.task_id, 1), BlobRef("ff" * 32, 3), None, 20)
    done = (lease.task_id, 1)
    beats = [(A, [done], False, ""), (B, [done], False, ""), (A, [(lease.task_id, 2)], False, "")]
    revoked = [r for r, _ in state.tasks.heartbeat_many(beats, 30, TIMING)]
    assert revoked == [[], [done], [(lease.task_id, 2)]]


def test_failure_backoff_and_max_attempts_fail_the_job(state: Store) -> None:
    add_nodes(state, (A, CPU))
    make_job(state, n=2, max_attempts=2)
    t = 0
    for attempt in (1, 2):
        t += 100_000  # past any backoff and the failed-node avoidance window
        leases, retry = state.tasks.lease_tasks(A, 1, t, TIMING)
        assert retry == 0 and leases[0].attempt == attempt
        state.tasks.fail_task(A, leases[0].task_id, attempt, TaskError(ErrorKind.CRASHED, "boom"), t)
        if attempt == 1:
            assert state.tasks.lease_tasks(A, 1, t + 1, TIMING) == ([], backoff_ms(1) - 1)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "(crashed): boom" in job.error
    assert state.tasks.lease_tasks(A, 5, t + 100_000, TIMING)[0] == []  # cancelled tasks are not leased


def test_released_lease_is_not_a_failure(state: Store) -> None:
    add_nodes(state, (A, CPU))
    make_job(state, n=1, max_attempts=1)
    (lease,), _ = state.tasks.lease_tasks(A, 1, 0, TIMING)
    assert state.tasks.fail_task(A, lease.task_id, 1, TaskError(ErrorKind.RELEASED, "draining"), 1) is True
    (again,), _ = state.tasks.lease_tasks(A, 1, 2, TIMING)
    assert again.attempt == 2 and state.nodes.get_node(A).failures == 0  # type: ignore[union-attr]


def test_capability_matching(state: Store) -> None:
    add_nodes(state, (A, CPU), (B, GPU))
    make_job(state, n=1, device="cuda")
    make_job(state, n=1, job_id="cd" * 32, min_memory=12 << 30)
    assert state.tasks.lease_tasks(A, 5, 10, TIMING)[0] == []
    got, _ = state.tasks.lease_tasks(B, 5, 10, TIMING)
    assert len(got) == 2


def test_cancel_only_by_submitter(state: Store) -> None:
    add_nodes(state, (A, CPU))
    make_job(state, n=2)
    with pytest.raises(PermissionDenied):
        state.jobs.cancel_job(JOB, A, 5)
    job = state.jobs.cancel_job(JOB, SUBMITTER, 5)
    assert job.state == JobState.CANCELLED
    assert state.tasks.lease_tasks(A, 5, 10, TIMING)[0] == []
    with pytest.raises(NotFound):
        state.jobs.cancel_job("99" * 32, SUBMITTER, 5)


def test_registration_nonce_cannot_be_replayed(state: Store) -> None:
    state.nodes.register_node(A, CPU, "01" * 32, 0, 10_000, "n1")
    with pytest.raises(Rejected, match="already used"):
        state.nodes.register_node(A, CPU, "02" * 32, 1, 10_000, "n1")
    assert state.nodes.session_address("01" * 32, 5) == A
    assert state.nodes.session_address("01" * 32, 20_000) is None


def test_concurrent_leases_never_hand_out_a_task_twice(state: Store) -> None:
    import threading

    nodes = [f"0x{i:040x}" for i in range(1, 9)]
    add_nodes(state, *[(n, CPU) for n in nodes])
    make_job(state, n=200)
    got: list[str] = []
    lock = threading.Lock()

    def worker(node: str) -> None:
        while True:
            leases, _ = state.tasks.lease_tasks(node, 3, 10, TIMING)
            if not leases:
                return
            with lock:
                got.extend(lz.task_id for lz in leases)

    threads = [threading.Thread(target=worker, args=(n,)) for n in nodes]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 200 and len(set(got)) == 200


def test_batched_results_mix_accepted_and_rejected(state: Store) -> None:

    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=3)
    mine, _ = state.tasks.lease_tasks(A, 2, 10, TIMING)
    theirs, _ = state.tasks.lease_tasks(B, 1, 10, TIMING)
    out = BlobRef("ff" * 32, 3)
    items = [
        ResultItem(A, receipt(mine[0].task_id, 1), out, None),
        ResultItem(A, receipt(theirs[0].task_id, 1), out, None),  # someone else's lease
        ResultItem(A, receipt(mine[0].task_id, 1), out, None),  # the same result twice in one batch
        ResultItem(A, receipt(mine[1].task_id, 1), out, None),
        ResultItem(B, receipt(theirs[0].task_id, 1), out, None),
    ]
    outcomes = ResultAcceptance(state.engine).accept_results(items, 20)
    # the batch completed the job, so each accepted result says so
    assert outcomes[0] == outcomes[3] == outcomes[4] == (JOB, True)
    assert isinstance(outcomes[1], Rejected) and isinstance(outcomes[2], Rejected)
    events = state.jobs.events_after(JOB, 0)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    done = [e for e in events if e.kind == "completed"]
    assert [e.tasks_done for e in done] == [1, 2, 3]
    assert state.nodes.get_node(A).completed == 2  # type: ignore[union-attr]


def test_a_node_holds_at_most_its_lease_cap_however_it_asks(state: Store) -> None:
    # A node hoarding leases (asking again and again, never handing in) keeps them from other
    # nodes and stalls their jobs until each lease expires: it gets at most LeaseTiming.per_node.
    capped = LeaseTiming(ttl_ms=1000, grace_ms=500, per_node=3)
    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=10)
    first, _ = state.tasks.lease_tasks(A, 2, 10, capped)
    more, _ = state.tasks.lease_tasks(A, 100, 10, capped)  # asks for far more than the room left
    assert (len(first), len(more)) == (2, 1)
    assert state.tasks.lease_tasks(A, 100, 10, capped) == ([], HOLDING_RETRY_MS)  # at the cap
    (answer,) = state.tasks.lease_many([(A, 5)], 10, capped)
    assert answer == ([], HOLDING_RETRY_MS)  # the same in a batch (a result's next leases too)
    others, _ = state.tasks.lease_tasks(B, 100, 10, capped)
    assert len(others) == 3  # the rest of the job is left for other nodes (up to their own cap)
    handed_in = receipt(first[0].task_id, 1)
    assert ResultAcceptance(state.engine).accept_result(A, handed_in, BlobRef("ff" * 32, 3), None, 20) == (JOB, False)
    again, _ = state.tasks.lease_tasks(A, 100, 30, capped)  # one handed in: room for one more
    assert len(again) == 1


def test_racing_lease_calls_of_one_node_stay_within_its_cap(state: Store) -> None:
    # Lease transactions of one node at once (LeaseTasks beside a result's next leases, calls to
    # two replicas) each count what the node holds before granting: they take turns per node.
    import threading

    capped = LeaseTiming(ttl_ms=60_000, grace_ms=500, per_node=5)
    add_nodes(state, (A, CPU))
    make_job(state, n=200)
    got: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(5):
            leases, _ = state.tasks.lease_tasks(A, 3, 10, capped)
            with lock:
                got.extend(lz.task_id for lz in leases)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == len(set(got)) == 5
