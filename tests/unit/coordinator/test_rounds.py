"""The round manager on SQLite and PostgreSQL: rounds close on quorum or deadline, late
results are refused, a restart resumes from the last closed round, and the job ends with
its final weights. Nodes are simulated in-process with the real worker code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.app import Coordinator
from coordinator.errors import Rejected
from coordinator.kinds.training.check import check_train_output
from coordinator.repositories.training.rounds import round_history, round_view
from coordinator.services.acceptance import ResultAcceptance
from coordinator.services.intake import plan_job
from coordinator.services.runtime import Runtime
from coordinator.services.training.rounds import RoundManager
from node.worker import handle
from tensorgrid.blobs import file_sha256
from tensorgrid.sandbox import SandboxLimits
from tensorgrid.spec import TrainingSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.types import Capabilities, JobState, Lease, Receipt
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.datasets import save_digits
from tests.unit.coordinator.conftest import SharedReferee, coordinator_limits

SUBMITTER = "0x" + "11" * 20
NODES = ["0x" + f"{i:02x}" * 20 for i in range(1, 5)]
CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rounds")
    save_digits(root / "digits.safetensors")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    export_program(model.train(), (torch.randn(4, 64),), root / "train.pt2")
    return {"dataset": root / "digits.safetensors", "train": root / "train.pt2"}


@pytest.fixture(scope="module")
def referee_limits() -> SandboxLimits:
    """The module's coordinators' referee limits, for the referee they share."""
    return coordinator_limits()


@pytest.fixture
def coordinator(db_url: str, shared_referee: SharedReferee, tmp_path: Path) -> Iterator[Coordinator]:
    app = shared_referee.coordinator(db_url, tmp_path)
    yield app
    app.runtime.shutdown()
    app.store.close()


def submit(app: Coordinator, files: dict[str, Path], **kw: Any) -> tuple[str, TrainingSpec]:
    refs = {name: app.blobs.put_file(path) for name, path in files.items()}
    settings: dict[str, Any] = dict(rounds=3, workers_per_round=2, inner_steps=4, batch_size=8, nonce="n")
    settings.update(kw)
    spec = TrainingSpec(train_program=refs["train"], dataset=refs["dataset"], **settings)
    raw = canonical_json(spec)
    sh = spec_hash(raw)
    job_id = job_id_for(SUBMITTER, sh)
    job, tasks = plan_job(app.kinds, raw, SUBMITTER, sh, job_id, app.blobs, app.config.limits)
    assert job.kind == "training" and len(tasks) == spec.workers_per_round
    app.store.jobs.create_job(job, tasks, now_ms=now_ms())
    for i, node in enumerate(NODES):
        app.store.nodes.register_node(node, CPU, f"{i:064x}", 0, 10**12, f"nonce-{node}")
    return job_id, spec


def work(app: Coordinator, node: str, tmp: Path) -> tuple[Lease, Path, str] | None:
    """Lease one task as `node` and run it with the real worker code; returns (lease, output, commitment)."""
    leases, _ = app.store.tasks.lease_tasks(node, 1, now_ms(), app.config.timing)
    if not leases:
        return None
    lease = leases[0]
    paths = {n: str(app.blobs.path_for(v["sha256"])) for n, v in lease.settings["blobs"].items()}  # type: ignore[attr-defined]
    out = tmp / f"{lease.task_id}-{lease.attempt}.out"
    reply = handle(
        {
            "id": "1",
            "kind": lease.kind,
            "model_path": str(app.blobs.path_for(lease.model.sha256)),  # type: ignore[union-attr]
            "input_path": str(app.blobs.path_for(lease.input.sha256)),
            "output_path": str(out),
            "settings": {**lease.settings, "paths": paths},
            "device": "cpu",
            "threads": 1,
        }
    )
    assert reply["ok"], reply
    return lease, out, reply["commitment"]


def deliver(app: Coordinator, node: str, lease: Lease, out: Path, commitment: str) -> None:
    ref = app.blobs.put_file(out)
    check_train_output(app.store.engine, app.blobs, lease.task_id, app.blobs.path_for(ref.sha256), commitment)
    receipt = Receipt(lease.job_id, lease.task_id, lease.attempt, lease.input.sha256, ref.sha256, commitment, b"s")
    ResultAcceptance(app.store.engine).accept_result(node, receipt, ref, None, now_ms())


def new_manager(app: Coordinator) -> RoundManager:
    """A round manager of its own, as another replica would have."""
    return RoundManager(app.runtime, app.store, app.blobs, b"\0" * 32)


def now_ms() -> int:
    return Runtime.now_ms()


def run_round(app: Coordinator, tmp: Path, workers: int) -> None:
    for node in NODES[:workers]:
        got = work(app, node, tmp)
        assert got is not None
        deliver(app, node, *got)


def round_events(app: Coordinator, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(e.message) for e in app.store.jobs.events_after(job_id, 0) if e.kind == "round"]


def test_rounds_run_to_the_final_weights(coordinator: Coordinator, files: dict[str, Path], tmp_path: Path) -> None:
    app = coordinator
    job_id, spec = submit(app, files)

    async def scenario() -> None:
        manager = new_manager(app)
        assert await manager.advance(job_id) == "open"  # no result yet
        for r in range(spec.rounds):
            view = round_view(app.store.engine, job_id)
            assert view is not None and view.round == r
            run_round(app, tmp_path, spec.workers_per_round)
            assert await manager.advance(job_id) == ("finished" if r == spec.rounds - 1 else "closed")

    asyncio.run(scenario())
    job = app.store.jobs.get_job(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    history = round_history(app.store.engine, job_id)
    assert [h["round_no"] for h in history] == [0, 1, 2]
    assert job.result is not None and job.result.sha256 == history[-1]["weights_sha"]
    assert job.tasks_done == job.tasks_total == 6
    weights = load_tensors(app.blobs.path_for(job.result.sha256))
    assert set(weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    events = round_events(app, job_id)
    assert [e["round"] for e in events] == [0, 1, 2]
    assert all(e["workers"] == 2 and e["bytes_up"] > 0 and 0 <= e["accuracy"] <= 1 for e in events)
    assert events[-1]["final"] and events[-1]["train_program"] == spec.train_program.sha256
    assert events[-1]["accuracy"] > events[0]["accuracy"]


def test_plain_rounds_average_then_the_optimizer_steps(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path
) -> None:
    app = coordinator
    job_id, spec = submit(app, files, outer_plain_rounds=2)

    async def scenario() -> None:
        manager = new_manager(app)
        for r in range(spec.rounds):
            run_round(app, tmp_path, spec.workers_per_round)
            assert await manager.advance(job_id) == ("finished" if r == spec.rounds - 1 else "closed")

    asyncio.run(scenario())
    history = round_history(app.store.engine, job_id)
    momenta = [load_tensors(app.blobs.path_for(h["momentum_sha"])) for h in history]
    assert all(float(t.abs().sum()) == 0.0 for m in momenta[:2] for t in m.values())  # rounds 0, 1: plain
    assert sum(float(t.abs().sum()) for t in momenta[2].values()) > 0  # round 2: Nesterov's first step


def test_quorum_closes_the_round_and_late_results_are_refused(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path
) -> None:
    app = coordinator
    job_id, spec = submit(app, files, workers_per_round=4, quorum=0.5, inner_steps=2)
    assert spec.quorum_workers == 2
    run = [work(app, node, tmp_path) for node in NODES]  # all four leased and computed
    for node, got in list(zip(NODES, run, strict=True))[:2]:
        assert got is not None
        deliver(app, node, *got)
    assert asyncio.run(new_manager(app).advance(job_id)) == "closed"
    late_node, late = NODES[2], run[2]
    assert late is not None
    with pytest.raises(Rejected):
        deliver(app, late_node, *late)
    assert round_history(app.store.engine, job_id)[0]["workers"] == 2
    job = app.store.jobs.get_job(job_id)
    assert (job.tasks_done, job.tasks_total) == (2, 2 + 4)  # two cancelled, four new


def test_deadline_closes_a_round_short_of_quorum(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = coordinator
    job_id, spec = submit(app, files, round_deadline_s=5, task_time_limit_s=5)
    run_round(app, tmp_path, 1)
    manager = new_manager(app)
    assert asyncio.run(manager.advance(job_id)) == "open"
    later = now_ms() + 6_000
    monkeypatch.setattr(Runtime, "now_ms", staticmethod(lambda: later))
    assert asyncio.run(manager.advance(job_id)) == "closed"
    assert round_history(app.store.engine, job_id)[0]["workers"] == 1


def test_a_round_without_results_fails_the_job_after_max_attempts(
    coordinator: Coordinator, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = coordinator
    job_id, spec = submit(app, files, round_deadline_s=5, task_time_limit_s=5, max_attempts=2)
    manager = new_manager(app)
    created = app.store.jobs.get_job(job_id).created_ms
    monkeypatch.setattr(Runtime, "now_ms", staticmethod(lambda: created + 6_000))  # past one deadline: keep waiting
    assert asyncio.run(manager.advance(job_id)) == "open"
    monkeypatch.setattr(Runtime, "now_ms", staticmethod(lambda: created + 10_001))
    assert asyncio.run(manager.advance(job_id)) == "failed"
    job = app.store.jobs.get_job(job_id)
    assert job.state == JobState.FAILED and "round 0 got no result" in job.error


def test_restart_resumes_from_the_last_closed_round(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, db_url: str, shared_referee: SharedReferee
) -> None:
    app = coordinator
    job_id, spec = submit(app, files)
    run_round(app, tmp_path, 2)
    view = round_view(app.store.engine, job_id)
    assert asyncio.run(new_manager(app).advance(job_id)) == "closed"
    # The same round cannot close twice (a second replica, or a retry after a crash).
    assert view is not None
    from coordinator.errors import Conflict
    from coordinator.repositories.training import rounds as store

    with pytest.raises(Conflict):
        closed = store.ClosedRound(0, (0,), 1, None, None, None, 1, view.weights, view.weights)
        store.close_round(app.store.engine, view, closed, now_ms())
    restarted = shared_referee.coordinator(db_url, tmp_path)
    try:
        resumed = round_view(restarted.store.engine, job_id)
        assert resumed is not None and resumed.round == 1 and resumed.momentum is not None
        run_round(restarted, tmp_path, 2)
        assert asyncio.run(new_manager(restarted).advance(job_id)) == "closed"
        assert [h["round_no"] for h in round_history(restarted.store.engine, job_id)] == [0, 1]
    finally:
        restarted.runtime.shutdown()
        restarted.store.close()


def test_bad_outputs_are_refused(coordinator: Coordinator, files: dict[str, Path], tmp_path: Path) -> None:
    app = coordinator
    submit(app, files)
    got = work(app, NODES[0], tmp_path)
    assert got is not None
    lease, out, commitment = got
    with pytest.raises(Rejected, match="commitment"):
        check_train_output(app.store.engine, app.blobs, lease.task_id, out, "ab" * 32)
    save_tensors({"0.weight": torch.zeros(3)}, tmp_path / "junk.safetensors")
    with pytest.raises(Rejected, match="pseudo-gradient"):
        check_train_output(app.store.engine, app.blobs, lease.task_id, tmp_path / "junk.safetensors")
    check_train_output(app.store.engine, app.blobs, lease.task_id, out, commitment)
    assert file_sha256(out).size > 0
