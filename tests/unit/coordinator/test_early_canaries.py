"""Canaries leased with their shards (services/verification/canaries.py): a canary drawn on a
job's last shard runs on a node that is idle while the shard computes, so the job does not wait
one more shard's compute after its last result; nothing about the canary is weaker.

The coordinator's Verification service over a real Store (SQLite, PostgreSQL) and real tensor
blobs; the canary is forced by the policy (canary_rate 1), the referee's ruling given as a Ruling.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.kinds.inference.effects import OpenCheck, SettleCheck
from coordinator.repositories.jobs import NewTask
from coordinator.repositories.store import Store
from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.verification.checks import PARKED
from coordinator.repositories.verification.rulings import Ruling
from coordinator.services.acceptance import ResultAcceptance, ResultItem
from coordinator.services.runtime import Runtime
from coordinator.services.verification.manager import Verification
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import task_id_for
from tensorgrid.types import BlobRef, Lease, Receipt
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.jobs import new_job
from tests.unit.coordinator.test_checkers import CPU, TIMING

SUBJECT, IDLE = "0x" + "aa" * 20, "0x" + "bb" * 20
JOB = "ab" * 32
ROWS, SHARDS = 6, 3
POLICY = '{"mode": "spotcheck", "trust_after": 10, "canary_rate": 1.0}'
NOW = 0  # each test's start (_now): the service stamps its writes with the clock, and a checker
# must have been seen within ACTIVE_MS of it; a clock read at import, minutes before a test runs
# in a full suite, made every node look gone and no canary had a checker


@pytest.fixture(autouse=True)
def _now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "NOW", Runtime.now_ms())


@pytest.fixture
def state(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    for i, addr in enumerate((SUBJECT, IDLE)):
        store.nodes.register_node(addr, CPU, f"{i:064x}", NOW, 10**9, f"nonce-{addr}")
    yield store
    store.close()


class Grid:
    """A 3-shard job; IDLE ran the first two shards, SUBJECT holds the last one's lease."""

    def __init__(self, state: Store, tmp: Path) -> None:
        self.state, self.tmp = state, tmp
        self.blobs = BlobStore(tmp / "blobs")
        self.v = Verification(Runtime(inline_db=True, db_threads=1, work_threads=1), state, self.blobs, b"k", None)
        self.v.canaries.add("inference")  # as the inference kind does (coordinator/kinds/inference)
        inputs = [
            self._put({"x": torch.arange(ROWS * 2, dtype=torch.float32).reshape(ROWS, 2) + 100 * i})
            for i in range(SHARDS)
        ]
        job = new_job(JOB, kind="inference", max_attempts=3, verification_json=POLICY)
        tasks = [NewTask(i, task_id_for(JOB, i), inputs[i], ROWS) for i in range(SHARDS)]
        state.jobs.create_job(job, tasks, now_ms=1)
        first = state.tasks.lease_tasks(IDLE, SHARDS - 1, NOW, TIMING)[0]
        self.leased(first, IDLE)
        for lease in first:
            self.accept(IDLE, lease, self.output(lease.input), direct_ruling=True)
        *canaries, self.last = sorted(state.tasks.lease_tasks(SUBJECT, SHARDS, NOW, TIMING)[0], key=_is_shard)
        assert len(canaries) == SHARDS - 1 and _is_shard(self.last)
        for canary in canaries:  # the first shards' canaries, run by SUBJECT
            self.accept(SUBJECT, canary, self.output(canary.input))
        assert state.verification.job_checks(JOB) == {"spotcheck:verified": SHARDS - 1, "canary:verified": SHARDS - 1}

    def _put(self, tensors: dict[str, torch.Tensor]) -> BlobRef:
        path = self.tmp / "t.safetensors"
        save_tensors(tensors, path)
        return self.blobs.put_file(path)

    def output(self, source: BlobRef) -> BlobRef:
        """What an honest node computes: each row doubled (deterministic, row independent)."""
        return self._put({"output": load_tensors(self.blobs.path_for(source.sha256))["x"] * 2})

    def record(self, lease: Lease, node: str) -> TaskRecord:
        return TaskRecord(
            lease.task_id, JOB, lease.index, "leased", lease.kind, lease.attempt, node, None, lease.input, ROWS
        )

    def accept(self, node: str, lease: Lease, output: BlobRef, direct_ruling: bool = False) -> None:
        """The result goes through examine and the accepting transaction, as acceptance does."""
        plan, verdict = asyncio.run(self.v.examine(self.record(lease, node), node, output, referee_alone=True))
        effect = OpenCheck(plan) if plan is not None else SettleCheck(verdict) if verdict is not None else None
        receipt = Receipt(JOB, lease.task_id, lease.attempt, lease.input.sha256, output.sha256, signature=b"s")
        (outcome,) = ResultAcceptance(self.state.engine).accept_results(
            [ResultItem(node, receipt, output, ROWS, effect)], NOW + 1
        )
        assert isinstance(outcome, tuple)
        if direct_ruling and plan is not None:  # the referee re-ran the direct check: the subject was right
            self.state.verification.apply_ruling(plan.check_task_id, Ruling("77" * 32, True, ()), NOW + 2)

    def leased(self, leases: Lease | list[Lease], node: str) -> None:
        """Scheduler.granted's call, and the background work it starts, run to its end."""

        async def run() -> None:
            self.v.leased(leases if isinstance(leases, list) else [leases], node)
            await asyncio.gather(*self.v.rt._tasks)  # the early canaries' spawned work

        asyncio.run(run())

    def compare_parked(self) -> list[tuple[str, bool]]:
        settled: list[tuple[str, bool]] = []
        asyncio.run(self.v.canaries.compare_parked(lambda job, done: settled.append((job, done))))
        return settled


def _is_shard(lease: Lease) -> bool:
    return lease.task_id in {task_id_for(JOB, i) for i in range(SHARDS)}


def _pending(state: Store) -> list[str]:
    with state.engine.connect() as conn:
        return [r.task_id for r in conn.execute(select(s.tasks.c.task_id).where(s.tasks.c.state == "pending"))]


def test_a_canary_drawn_on_the_last_shard_runs_on_the_idle_node_before_the_last_result(
    state: Store, tmp_path: Path
) -> None:
    grid = Grid(state, tmp_path)
    state.jobs.jobs_to_aggregate()  # nothing else waits
    grid.leased(grid.last, SUBJECT)
    # the idle node gets the last shard's canary now, while the shard computes on SUBJECT
    (canary,), _ = state.tasks.lease_tasks(IDLE, 1, NOW + 1, TIMING)
    assert canary.task_id != grid.last.task_id and canary.kind == "inference" and canary.input != grid.last.input
    assert state.tasks.lease_tasks(SUBJECT, 1, NOW + 1, TIMING)[0] == []  # never the shard's own node
    assert state.verification.job_checks(JOB) == {"spotcheck:verified": 2, "canary:verified": 2}  # not shown yet
    # its output comes before the shard's result: kept (the job does not wait for it yet)
    assert asyncio.run(grid.v.examine(grid.record(canary, IDLE), IDLE, grid.output(canary.input)))[1] == PARKED
    grid.accept(IDLE, canary, grid.output(canary.input))
    # the last result: its check verifies, the canary it drew is the one that already ran
    grid.accept(SUBJECT, grid.last, grid.output(grid.last.input), direct_ruling=True)
    assert state.jobs.jobs_to_aggregate() == []  # the canary is compared first
    assert grid.compare_parked() == [(JOB, True)]
    assert state.jobs.jobs_to_aggregate() == [JOB] and _pending(state) == []  # no shard's compute after the last result
    assert state.verification.job_checks(JOB) == {"spotcheck:verified": 3, "canary:verified": 3}


def test_the_lease_of_a_check_draws_no_canary_of_its_own(state: Store, tmp_path: Path) -> None:
    """Checks do not recurse: a canary's lease (any check's) is no shard's, and draws no canary.
    A canary of a canary was drawn at canary_rate and leased at once; its chain is never settled
    (it stays ahead), and when the canary it followed ended, the node running it had its answer
    refused (a rejection and a backoff for an honest node: seen in a run drawing every canary)."""
    grid = Grid(state, tmp_path)
    grid.leased(grid.last, SUBJECT)
    (canary,), _ = state.tasks.lease_tasks(IDLE, 1, NOW + 1, TIMING)
    assert not _is_shard(canary)
    grid.leased(canary, IDLE)  # Scheduler.granted's call for every lease, checks' too
    with state.engine.connect() as conn:
        c = s.checks
        of_checks = conn.execute(select(c.c.check_id).where(c.c.subject_task.in_(select(c.c.check_id)))).all()
    assert of_checks == []
    assert state.tasks.lease_tasks(SUBJECT, 1, NOW + 1, TIMING)[0] == []  # nothing leased to SUBJECT for it


def test_an_early_canary_still_catches_a_wrong_shard(state: Store, tmp_path: Path) -> None:
    grid = Grid(state, tmp_path)
    grid.leased(grid.last, SUBJECT)
    (canary,), _ = state.tasks.lease_tasks(IDLE, 1, NOW + 1, TIMING)
    grid.accept(IDLE, canary, grid.output(canary.input))
    wrong = grid._put({"output": load_tensors(grid.blobs.path_for(grid.output(grid.last.input).sha256))["output"] + 1})
    grid.accept(SUBJECT, grid.last, wrong, direct_ruling=True)  # its spot-check missed it (the ruling said right)
    grid.compare_parked()
    with state.engine.connect() as conn:
        chk = conn.execute(select(s.checks).where(s.checks.c.check_id == canary.task_id)).one()
        ruling = conn.execute(select(s.referee_rulings).where(s.referee_rulings.c.check_id == canary.task_id)).first()
    assert chk.kind == "canary" and chk.state == "disputed" and ruling is not None  # the referee rules on the shard
    assert state.jobs.jobs_to_aggregate() == []


def test_an_early_canary_is_void_when_its_result_is_not_verified_or_its_lease_lapses(
    state: Store, tmp_path: Path
) -> None:
    grid = Grid(state, tmp_path)
    grid.leased(grid.last, SUBJECT)
    canary_id = _pending(state)[0]
    with state.engine.begin() as conn:  # SUBJECT's lease lapsed: the shard is leased again (attempt 2)
        conn.execute(s.tasks.update().where(s.tasks.c.task_id == grid.last.task_id).values(state="pending", node=None))
    (again,), _ = state.tasks.lease_tasks(SUBJECT, 1, NOW + 1, TIMING)
    assert again.task_id == grid.last.task_id and again.attempt == 2
    grid.leased(again, SUBJECT)
    with state.engine.connect() as conn:
        old = conn.execute(select(s.tasks.c.state).where(s.tasks.c.task_id == canary_id)).scalar()
        rows = conn.execute(select(s.checks.c.check_id).where(s.checks.c.state == "ahead")).all()
    assert old == "cancelled" and len(rows) == 1 and rows[0].check_id != canary_id  # the new lease's own
    # the new lease's result is caught: its canary is void too, and the job does not wait for it
    (new_canary,) = [r.check_id for r in rows]
    grid.accept(SUBJECT, again, grid._put({"output": torch.zeros(ROWS, 2)}))
    check_id = grid.v._fresh_id("check", again.task_id, again.attempt)
    state.verification.apply_ruling(check_id, Ruling("77" * 32, False, ()), NOW + 2)
    with state.engine.connect() as conn:
        assert conn.execute(select(s.checks).where(s.checks.c.check_id == new_canary)).first() is None
        assert conn.execute(select(s.tasks.c.state).where(s.tasks.c.task_id == new_canary)).scalar() == "cancelled"


def test_a_busy_assignee_keeps_an_early_canary_past_the_check_wait(state: Store, tmp_path: Path) -> None:
    """The canary's drawn node is busy with its own shards for as long as they take: it keeps the
    canary (nothing waits for it yet), where a check of a result is taken from it after check_wait."""
    grid = Grid(state, tmp_path)
    other = "cd" * 32
    state.jobs.create_job(new_job(other), [NewTask(0, task_id_for(other, 0), BlobRef("ee" * 32, 0), 1)], now_ms=0)
    grid.leased(grid.last, SUBJECT)
    with state.engine.connect() as conn:
        (canary_id,) = conn.execute(select(s.checks.c.check_id).where(s.checks.c.state == "ahead")).scalars()
    (busy,), _ = state.tasks.lease_tasks(IDLE, 1, NOW + 1, TIMING)  # IDLE takes the other job's shard first
    assert busy.task_id == task_id_for(other, 0)
    wait_ms = 30_000
    state.verification.reassign_checks(NOW + wait_ms + 10_000, patience_ms=wait_ms)  # within IDLE's lease
    with state.engine.connect() as conn:
        held = conn.execute(select(s.check_assignments.c.node).where(s.check_assignments.c.task_id == canary_id))
        barred = conn.execute(select(s.check_exclusions.c.node).where(s.check_exclusions.c.task_id == canary_id))
        assert held.scalar() == IDLE and {r.node for r in barred} == {SUBJECT}
