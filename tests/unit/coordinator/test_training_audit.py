"""Training audits: the replay checks on real runs (honest, lazy, scaler, forged reveals), and
the audit's life in the coordinator on SQLite and PostgreSQL: drawn on accept, paid only
once it passes, caught results unpaid and reissued, missing reveals expiring at the round's
deadline, and a reveal arriving after a restart still completing its audit."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from coordinator.app import Coordinator
from coordinator.db import schema as s
from coordinator.errors import NotFound, Rejected
from coordinator.kinds.training.check import check_train_output
from coordinator.kinds.training.effects import OpenAudit
from coordinator.repositories.ledger.credits import set_job_price
from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.training import audits as audit_store
from coordinator.repositories.training.audits import AuditPlan
from coordinator.repositories.training.rounds import round_history
from coordinator.repositories.verification import trust
from coordinator.services.acceptance import ResultAcceptance, ResultItem
from coordinator.services.intake import plan_job
from coordinator.services.runtime import Runtime
from coordinator.services.training.replay import AuditCase, check_reveal, reveal_plan
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.errors import TensorGridError
from tensorgrid.sandbox import SandboxLimits
from tensorgrid.spec import TrainingSpec, VerificationSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.training.commitments import checkpoint_steps
from tensorgrid.training.compression import PseudoGradient
from tensorgrid.training.inner import STEP_KEY, InnerSettings, checkpoint_name, write_result
from tensorgrid.training.outer import initial_weights
from tensorgrid.types import BlobRef, Capabilities, JobState, Lease, Receipt
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.datasets import save_digits
from tests.integration.train_adversaries import TRAINERS, settings_for
from tests.unit.coordinator.conftest import SharedReferee, coordinator_limits

SUBMITTER = "0x" + "11" * 20
NODES = ["0x" + f"{i:02x}" * 20 for i in range(1, 5)]
CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
REF = BlobRef("0" * 64, 0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit")
    save_digits(root / "digits.safetensors")
    digits = load_tensors(root / "digits.safetensors")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 10)
    )
    export_program(model.train(), (torch.randn(4, 64),), root / "train.pt2")
    initial_weights(root / "train.pt2", root / "w0.safetensors")
    save_tensors(
        {"features": digits["features"][:128], "labels": digits["labels"][:128]},
        root / "shard.safetensors",
    )
    return {"dataset": root / "digits.safetensors", "train": root / "train.pt2", "w0": root / "w0.safetensors",
            "shard": root / "shard.safetensors"}  # fmt: skip


# ---- the checks on their own ------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    result: Path
    ckpt: Path
    commitment: str
    marks: list[int]


SETTINGS = InnerSettings("cross_entropy", 1e-2, (0.9, 0.999), 0.01, 1e-8, steps=8, batch_size=8, seed=7,
                         checkpoint_every=2)  # fmt: skip


@pytest.fixture(scope="module")
def runs(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("runs")
    out: dict[str, Run] = {}
    for name, trainer in TRAINERS.items():
        r = trainer(files["train"], files["w0"], files["shard"], SETTINGS, root / name)
        write_result(r, root / f"{name}.out", "int8")
        out[name] = Run(root / f"{name}.out", root / name, r.final_commitment, r.checkpoint_steps)
    return out


def case(files: dict[str, Path], run: Run, segment: int, **changes: Any) -> AuditCase:
    revealed = {step: run.ckpt / checkpoint_name(step) for step in reveal_plan(run.marks, segment)}
    c = AuditCase(files["train"], files["shard"], files["w0"], run.result, SETTINGS, run.commitment, segment, revealed)
    return replace(c, **changes)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_honest_run_passes_every_segment_at_any_thread_count(
    files: dict[str, Path], runs: dict[str, Run], threads: int
) -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # the run was made with the session's count; the replay differs
    try:
        for j in range(len(runs["honest"].marks) - 1):
            finding = check_reveal(case(files, runs["honest"], j))
            assert finding.passed, (j, finding.reason)
    finally:
        torch.set_num_threads(old)


def test_reveal_plan_asks_for_the_replay_end_only() -> None:
    marks = checkpoint_steps(20, 5)
    assert reveal_plan(marks, 0) == [5]  # the replay starts at step 0, the coordinator's own
    assert reveal_plan(marks, 2) == [15]  # the last checkpoint is rebuilt from the pseudo-gradient
    assert reveal_plan(marks, 3) == []  # a replay to the end is checked against the pseudo-gradient
    with pytest.raises(ValueError):
        reveal_plan(marks, 4)


def test_an_audit_reveals_at_most_one_model_and_under_5x_the_upload(runs: dict[str, Run]) -> None:
    """Issue 11's bound: reveal bytes ≤ 5 × pseudo-gradient bytes. An int8 upload is about a
    quarter of the float32 model, so revealing two models per audit (as before) was over it."""
    honest = runs["honest"]
    upload = honest.result.stat().st_size
    for j in range(len(honest.marks) - 1):
        steps = reveal_plan(honest.marks, j)
        assert len(steps) <= 1
        revealed = sum((honest.ckpt / checkpoint_name(step)).stat().st_size for step in steps)
        assert revealed <= 5 * upload, (j, revealed, upload)


@pytest.mark.parametrize(
    ("behaviour", "segment", "why"),
    [
        # its last link commits the old state it re-committed, not global − what it uploaded
        ("lazy", 0, "is not global − final weights"),
        ("lazy", 2, "step counter"),  # re-committed old state: checkpoint 6's counter is 4
        ("lazy", 3, "is not global − final weights"),  # replayed to the end: nothing revealed
        ("lazy_skip", 1, "replaying steps 0→4"),  # forged counters: the replay catches the skipped steps
        ("lazy_skip", 2, "replaying steps 0→6"),
        ("lazy_skip", 3, "is not global − final weights"),
        ("scaler", 0, "is not global − final weights"),  # its last link is sealed over its honest upload
        ("scaler", 2, "is not global − final weights"),
        ("scaler", 3, "is not global − final weights"),
    ],
)
def test_cheaters_are_caught(
    files: dict[str, Path], runs: dict[str, Run], behaviour: str, segment: int, why: str
) -> None:
    finding = check_reveal(case(files, runs[behaviour], segment))
    assert not finding.passed and why in finding.reason, finding.reason
    assert (
        len(finding.evidence) == 64
        and finding.evidence != hashlib.sha256(runs[behaviour].result.read_bytes()).hexdigest()
    )


def test_forged_moments_are_caught_by_a_replay_past_them(files: dict[str, Path], tmp_path: Path) -> None:
    """Moments are committed by digest only and never revealed. A node that rewrites them at
    checkpoint 4 (to steer the next steps) and commits what it then trains with stays
    consistent from there on; every replay that runs past step 4 (from step 0) catches it."""
    from tensorgrid.training.commitments import chain, checkpoint_digest, model_part
    from tensorgrid.training.compression import seal
    from tensorgrid.training.inner import _Run
    from tensorgrid.training.objective import load_weights

    run = _Run(files["train"], files["shard"], SETTINGS)
    load_weights(run.module, load_tensors(files["w0"]))
    start = {n: t.detach().clone() for n, t in run.module.state_dict().items()}
    marks, digests, losses = checkpoint_steps(SETTINGS.steps, SETTINGS.checkpoint_every), [], []
    (tmp_path / "ckpt").mkdir()
    while True:
        if run.step == 4:
            for st in run.optimizer.state.values():
                st["exp_avg"].mul_(-10.0)  # the steering
        if run.step in marks:
            state = run.state()
            digests.append(checkpoint_digest(state))
            save_tensors(model_part(state), tmp_path / "ckpt" / checkpoint_name(run.step))
        if run.step == SETTINGS.steps:
            break
        losses.append(run.train_step())
    local = run.module.state_dict()
    pg = {n: (start[n] - local[n]).float() for n in start if start[n].is_floating_point()}
    forged = PseudoGradient(pg, 128, SETTINGS.steps, losses, marks, chain(digests),
                            checkpoint_digests=[d.hex() for d in digests])  # fmt: skip
    sealed = seal(forged, load_tensors(files["w0"]), "int8")  # its last link commits what it uploads
    write_result(sealed, tmp_path / "out", "int8")
    forger = Run(tmp_path / "out", tmp_path / "ckpt", sealed.final_commitment, marks)
    findings = [check_reveal(case(files, forger, j)) for j in range(len(marks) - 1)]
    assert [f.passed for f in findings] == [True, True, False, False]  # replays to 2 and 4 see nothing wrong
    assert "replaying steps 0→6" in findings[2].reason and "global − final weights" in findings[3].reason


def test_a_checkpoint_that_does_not_hash_into_the_chain_is_a_forgery(
    files: dict[str, Path], runs: dict[str, Run], tmp_path: Path
) -> None:
    honest = runs["honest"]
    state = load_tensors(honest.ckpt / checkpoint_name(4))
    state["model.0.weight"] = state["model.0.weight"] + 1e-3
    save_tensors(state, tmp_path / "forged.safetensors")
    c = case(files, honest, 1)
    finding = check_reveal(replace(c, revealed={**c.revealed, 4: tmp_path / "forged.safetensors"}))
    assert not finding.passed and "does not hash to its model digest in c_2" in finding.reason


def test_a_wrong_step_counter_is_caught_even_when_committed(
    files: dict[str, Path], runs: dict[str, Run], tmp_path: Path
) -> None:
    """A chain built over states whose counter lies: the links hold, the counter does not."""
    from tensorgrid.training.commitments import chain, state_digest
    from tensorgrid.training.compression import read_result

    honest = runs["honest"]
    pg = read_result(honest.result)
    inner = honest.marks[:-1]  # the last checkpoint is sealed over the upload, never saved
    states = {m: load_tensors(honest.ckpt / checkpoint_name(m)) for m in inner}
    states[6][STEP_KEY] = torch.tensor(5, dtype=torch.int64)
    forged = tmp_path / "ckpt"
    forged.mkdir()
    for m, st in states.items():
        save_tensors(st, forged / checkpoint_name(m))
    digests = [state_digest(states[m]).hex() + d[64:] for m, d in zip(inner, pg.checkpoint_digests[:-1], strict=True)]
    digests.append(pg.checkpoint_digests[-1])
    links = chain(bytes.fromhex(d) for d in digests)
    r = load_tensors(honest.result)
    write_result(replace(pg, commitments=links, checkpoint_digests=digests), tmp_path / "out", "int8")
    assert r  # the original file is untouched
    run = Run(tmp_path / "out", forged, links[-1], honest.marks)
    finding = check_reveal(case(files, run, 2))
    assert not finding.passed and "step 6 has the AdamW step counter 5" in finding.reason


def test_a_missing_checkpoint_and_a_foreign_start_fail(
    files: dict[str, Path], runs: dict[str, Run], tmp_path: Path
) -> None:
    c = case(files, runs["honest"], 1)
    assert not (runs["honest"].ckpt / checkpoint_name(8)).exists()  # the last one is never revealed
    finding = check_reveal(replace(c, revealed={k: v for k, v in c.revealed.items() if k != 4}))
    assert not finding.passed and "step 4 was not revealed" in finding.reason
    weights = load_tensors(files["w0"])
    save_tensors({k: v + 0.01 for k, v in weights.items()}, tmp_path / "other.safetensors")
    finding = check_reveal(replace(c, weights=tmp_path / "other.safetensors"))
    assert not finding.passed and "c_0 does not commit the round's global weights" in finding.reason
    finding = check_reveal(replace(c, commitment="ab" * 32))
    assert not finding.passed and "receipt's commitment" in finding.reason
    (tmp_path / "junk").write_bytes(b"not safetensors")
    finding = check_reveal(replace(c, revealed={**c.revealed, 4: tmp_path / "junk"}))
    assert not finding.passed and "not a valid safetensors file" in finding.reason


# ---- the audit in the coordinator ---------------------------------------------------------------


@pytest.fixture(scope="module")
def referee_limits() -> SandboxLimits:
    """The module's coordinators' referee limits, for the referee they share."""
    return coordinator_limits()


@pytest.fixture
def coordinator(db_url: str, shared_referee: SharedReferee, tmp_path: Path) -> Iterator[Coordinator]:
    app = make_app(db_url, shared_referee, tmp_path)
    yield app
    close_app(app)


def make_app(db_url: str, referee: SharedReferee, tmp_path: Path) -> Coordinator:
    """A coordinator sharing the module's referee (intake's trial load, audit replays)."""
    app = referee.coordinator(db_url, tmp_path)
    app.rounds._started = True  # tests drive advance() themselves: no background loop
    return app


def close_app(app: Coordinator) -> None:
    app.runtime.shutdown()
    app.store.close()


def submit(app: Coordinator, files: dict[str, Path], **kw: Any) -> tuple[str, TrainingSpec]:
    refs = {name: app.blobs.put_file(files[name]) for name in ("train", "dataset")}
    settings: dict[str, Any] = dict(rounds=2, workers_per_round=2, inner_steps=4, batch_size=8, checkpoint_every=2,
                                    nonce="n", reward_per_task_wei=100)  # fmt: skip
    settings.update(kw)
    spec = TrainingSpec(train_program=refs["train"], dataset=refs["dataset"], **settings)
    raw = canonical_json(spec)
    sh = spec_hash(raw)
    job_id = job_id_for(SUBMITTER, sh)
    job, tasks = plan_job(app.kinds, raw, SUBMITTER, sh, job_id, app.blobs, app.config.limits)
    app.store.jobs.create_job(job, tasks, now_ms=now_ms())
    set_job_price(app.store.engine, job_id, 100, 10**6)
    for i, node in enumerate(NODES):
        app.store.nodes.register_node(node, CPU, f"{i:056x}{job_id[:8]}", 0, 10**12, f"nonce-{node}-{job_id}")
    return job_id, spec


@dataclass(frozen=True)
class Done:
    node: str
    lease: Lease
    out: Path
    ckpt: Path
    commitment: str


def compute(app: Coordinator, node: str, tmp: Path, behaviour: str = "honest") -> Done:
    leases, _ = app.store.tasks.lease_tasks(node, 1, now_ms(), app.config.timing)
    assert leases, f"{node} got no task"
    lease = leases[0]
    s, compression = settings_for(lease, lease.input.sha256)
    weights = lease.settings["blobs"]["weights"]["sha256"]  # type: ignore[index]
    assert lease.model is not None
    path = app.blobs.path_for
    work = tmp / f"{lease.task_id[:8]}-{lease.attempt}"
    r = TRAINERS[behaviour](path(lease.model.sha256), path(weights), path(lease.input.sha256), s, work / "ckpt")
    write_result(r, work / "out", compression)
    return Done(node, lease, work / "out", work / "ckpt", r.final_commitment)


async def deliver(app: Coordinator, d: Done) -> AuditPlan | None:
    """What SubmitResult does for a training result (minus the wire)."""
    ref = app.blobs.put_file(d.out)
    check_train_output(app.store.engine, app.blobs, d.lease.task_id, app.blobs.path_for(ref.sha256), d.commitment)
    plan = await app.rounds.audits.plan(app.store.tasks.get_task(d.lease.task_id), d.node)
    receipt = Receipt(
        d.lease.job_id, d.lease.task_id, d.lease.attempt, d.lease.input.sha256, ref.sha256, d.commitment, b"s"
    )
    (outcome,) = ResultAcceptance(app.store.engine).accept_results(
        [ResultItem(d.node, receipt, ref, None, OpenAudit(plan) if plan else None)], now_ms()
    )
    assert isinstance(outcome, tuple), outcome
    return plan


async def reveal(app: Coordinator, d: Done, step: int, node: str | None = None, body: bytes | None = None) -> None:
    data = body if body is not None else (d.ckpt / checkpoint_name(step)).read_bytes()
    ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await app.rounds.audits.receive(node or d.node, d.lease.task_id, d.lease.attempt, step, ref, chunks(), now_ms())


async def settled(app: Coordinator, d: Done, timeout: float = 60.0) -> audit_store.Audit:
    for _ in range(int(timeout * 20)):
        audit = audit_store.get_audit(app.store.engine, d.lease.task_id, d.lease.attempt)
        assert audit is not None
        if audit.state != "pending":
            return audit
        await asyncio.sleep(0.05)
    raise AssertionError("the audit never settled")


def credited(app: Coordinator, task_id: str) -> list[str]:
    with app.store.engine.connect() as conn:
        return [r.node for r in conn.execute(select(s.credits.c.node).where(s.credits.c.task_id == task_id))]


def events(app: Coordinator, job_id: str, kind: str) -> list[Any]:
    return [e for e in app.store.jobs.events_after(job_id, 0) if e.kind == kind]


def now_ms() -> int:
    return Runtime.now_ms()


class _Drawn(random.Random):
    """An audit draw that always audits and replays up to checkpoint segment + 1."""

    def __init__(self, segment: int) -> None:
        super().__init__(0)
        self.segment = segment

    def random(self) -> float:
        return 0.0

    def randrange(self, *args: Any, **kwargs: Any) -> int:
        return self.segment


def draw(app: Coordinator, monkeypatch: pytest.MonkeyPatch, segment: int) -> None:
    """Fix the coordinator's secret draw (these tests are about what follows it)."""
    monkeypatch.setattr(app.rounds.audits, "_rng", lambda task_id, attempt: _Drawn(segment))


def test_an_audited_result_is_paid_and_counted_only_once_it_passes(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = coordinator
    draw(app, monkeypatch, 0)  # replay steps 0 → 2: reveal checkpoint 2 (4 is rebuilt from the upload)
    job_id, spec = submit(app, files)

    async def scenario() -> None:
        done = [compute(app, node, tmp_path) for node in NODES[:2]]
        plans = [await deliver(app, d) for d in done]
        assert all(p is not None and p.steps == (2,) for p in plans)  # new nodes: always audited
        assert credited(app, done[0].lease.task_id) == []  # not before the audit passes
        assert await app.rounds.advance(job_id) == "auditing"
        for d, plan in zip(done, plans, strict=True):
            assert plan is not None
            for step in plan.steps:
                await reveal(app, d, step)
            assert (await settled(app, d)).state == "passed"
            assert credited(app, d.lease.task_id) == [d.node]
        assert await app.rounds.advance(job_id) == "closed"

    asyncio.run(scenario())
    states = [audit_store.get_audit(app.store.engine, *_key(app, job_id, i)) for i in (0, 1)]
    assert [a.state for a in states if a is not None] == ["passed", "passed"], states
    assert round_history(app.store.engine, job_id)[0]["workers"] == 2
    assert app.store.verification.reputation(NODES[0]).verified == 1 and not events(app, job_id, "caught")


def test_a_scaler_is_caught_unpaid_and_its_task_goes_to_another_node(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = coordinator
    draw(app, monkeypatch, 0)  # replay steps 0 → 2: reveal checkpoint 2
    job_id, spec = submit(app, files)

    async def scenario() -> Done:
        honest, cheat = compute(app, NODES[0], tmp_path), compute(app, NODES[1], tmp_path, "scaler")
        for d in (honest, cheat):
            plan = await deliver(app, d)
            assert plan is not None
            for step in plan.steps:
                await reveal(app, d, step)
        assert (await settled(app, honest)).state == "passed"
        audit = await settled(app, cheat)
        assert audit.state == "failed" and "is not global − final weights" in audit.reason
        assert await app.rounds.advance(job_id) == "open"  # one usable result of the two it needs
        assert app.store.tasks.get_task(cheat.lease.task_id).state == "pending"
        again = compute(app, NODES[2], tmp_path)
        assert again.lease.task_id == cheat.lease.task_id and again.lease.attempt == cheat.lease.attempt + 1
        plan = await deliver(app, again)
        assert plan is not None
        for step in plan.steps:
            await reveal(app, again, step)
        assert (await settled(app, again)).state == "passed"
        assert await app.rounds.advance(job_id) == "closed"
        return cheat

    cheat = asyncio.run(scenario())
    assert credited(app, cheat.lease.task_id) == [NODES[2]]  # the redo is paid, the scaled upload never
    caught = events(app, job_id, "caught")
    assert [e.node for e in caught] == [NODES[1]] and "failed its audit" in caught[0].message
    rep = app.store.verification.reputation(NODES[1])
    assert (rep.caught, rep.consecutive_valid) == (1, 0)
    assert round_history(app.store.engine, job_id)[0]["workers"] == 2


def test_a_replay_to_the_end_needs_no_reveal(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last checkpoint drawn: the replay's own weights check the pseudo-gradient, so the
    node is asked for nothing and the round manager settles the audit on its next pass."""
    app = coordinator
    draw(app, monkeypatch, 1)  # checkpoints 0, 2, 4: replay steps 0 → 4
    job_id, spec = submit(app, files)

    async def scenario() -> tuple[audit_store.Audit, audit_store.Audit]:
        honest, cheat = compute(app, NODES[0], tmp_path), compute(app, NODES[1], tmp_path, "scaler")
        for d in (honest, cheat):
            plan = await deliver(app, d)
            assert plan is not None and plan.steps == ()
        assert credited(app, honest.lease.task_id) == []
        assert await app.rounds.advance(job_id) == "open"  # both audited in this pass; one result is usable
        return await settled(app, honest), await settled(app, cheat)

    passed, failed = asyncio.run(scenario())
    assert passed.state == "passed" and passed.revealed == {} and credited(app, passed.task_id) == [NODES[0]]
    assert failed.state == "failed" and "is not global − final weights" in failed.reason
    assert [e.node for e in events(app, job_id, "caught")] == [NODES[1]]


def test_a_missing_reveal_expires_at_the_deadline_and_is_not_slashable(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = coordinator
    draw(app, monkeypatch, 0)
    job_id, spec = submit(app, files, round_deadline_s=30, task_time_limit_s=30)

    async def scenario() -> None:
        honest, silent = compute(app, NODES[0], tmp_path), compute(app, NODES[1], tmp_path)
        for d in (honest, silent):
            assert await deliver(app, d) is not None
        plan = audit_store.get_audit(app.store.engine, honest.lease.task_id, honest.lease.attempt)
        assert plan is not None
        for step in plan.steps:
            await reveal(app, honest, step)
        await settled(app, honest)
        assert await app.rounds.advance(job_id) == "auditing"  # the silent node's audit is open
        later = now_ms() + 31_000
        monkeypatch.setattr(Runtime, "now_ms", staticmethod(lambda: later))
        assert await app.rounds.advance(job_id) == "closed"  # deadline: expired, the round goes on without it
        with pytest.raises(Rejected, match="over"):
            await reveal(app, silent, 2)

    asyncio.run(scenario())
    audit = audit_store.get_audit(app.store.engine, *_key(app, job_id, 1))
    assert audit is not None and audit.state == "expired" and "not revealed" in audit.reason
    assert round_history(app.store.engine, job_id)[0]["workers"] == 1
    caught = events(app, job_id, "caught")
    assert len(caught) == 1 and caught[0].node == NODES[1] and "not revealed" in caught[0].message
    assert app.store.verification.reputation(NODES[1]).caught == 1
    assert credited(app, audit.task_id) == []


def _key(app: Coordinator, job_id: str, idx: int) -> tuple[str, int]:
    from tensorgrid.spec import task_id_for

    task = app.store.tasks.get_task(task_id_for(job_id, idx))
    return task.task_id, task.attempt


def test_a_reveal_after_a_restart_completes_the_audit(
    coordinator: Coordinator,
    files: dict[str, Path],
    tmp_path: Path,
    db_url: str,
    shared_referee: SharedReferee,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = coordinator
    draw(app, monkeypatch, 0)
    job_id, spec = submit(app, files, workers_per_round=1, quorum=1.0)
    d = compute(app, NODES[0], tmp_path)
    plan = asyncio.run(deliver(app, d))
    assert plan is not None and plan.steps == (2,)
    restarted = make_app(db_url, shared_referee, tmp_path)
    try:

        async def resume() -> None:
            assert await restarted.rounds.advance(job_id) == "auditing"
            for step in plan.steps:
                await reveal(restarted, d, step)
            assert (await settled(restarted, d)).state == "passed"
            assert await restarted.rounds.advance(job_id) == "closed"

        asyncio.run(resume())
        assert credited(restarted, d.lease.task_id) == [d.node]
    finally:
        close_app(restarted)


def test_reveals_are_refused_unless_asked_for(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = coordinator
    draw(app, monkeypatch, 0)
    submit(app, files)
    d = compute(app, NODES[0], tmp_path)

    async def scenario() -> None:
        plan = await deliver(app, d)
        assert plan is not None
        with pytest.raises(Rejected, match="another node"):
            await reveal(app, d, plan.steps[0], node=NODES[1])
        with pytest.raises(Rejected, match="was not asked for"):
            await reveal(app, d, 3, body=b"x")
        with pytest.raises(Rejected, match="over the limit"):
            await reveal(app, d, plan.steps[0], body=bytes(plan.max_bytes + 1))
        with pytest.raises(TensorGridError):  # bytes that are not what the header announced
            data = (d.ckpt / checkpoint_name(plan.steps[0])).read_bytes()

            async def chunks() -> AsyncIterator[bytes]:
                yield data[:-1] + b"\0"

            ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
            await app.rounds.audits.receive(
                d.node, d.lease.task_id, d.lease.attempt, plan.steps[0], ref, chunks(), now_ms()
            )
        with pytest.raises(NotFound):
            await app.rounds.audits.receive(d.node, "ab" * 32, 1, 2, BlobRef("cd" * 32, 1), _nothing(), now_ms())

    asyncio.run(scenario())
    audit = audit_store.get_audit(app.store.engine, d.lease.task_id, d.lease.attempt)
    assert audit is not None and audit.revealed == {} and audit.state == "pending"


def _signed(app: Coordinator, signer: Signer, d: Done) -> Receipt:
    output = hashlib.sha256(d.out.read_bytes()).hexdigest()
    receipt = Receipt(d.lease.job_id, d.lease.task_id, d.lease.attempt, d.lease.input.sha256, output, d.commitment)
    return sign_receipt(signer, app.domain, receipt)


async def _hand_in(app: Coordinator, signer: Signer, d: Done) -> tuple[int, ...]:
    """SubmitSmallResult as the servicer calls it; the reveal steps of its answer."""
    data = d.out.read_bytes()
    return (await app.acceptance.submit(signer.address, _signed(app, signer, d), len(data), data)).reveal_steps


@pytest.mark.parametrize("read", ["after", "before"])
def test_a_node_whose_answer_was_lost_is_asked_again_for_its_audits_checkpoints(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """An audited result was committed but its answer, naming the checkpoints to reveal, never
    reached the node: the replica that committed it was killed, or the node's deadline ran out
    while the group commit went through (it commits for a caller already gone: a coordinator
    whose work threads waited minutes on its referee's start). The node hands the result in
    again, and is told again what to reveal: refused instead ("the lease is over"), it revealed
    nothing and the audit held the round open until its deadline, 15 minutes by default (the
    flaky hang of test_replicas). read: the repeat's task record was read after the first
    commit, or before it (a repeat running alongside the attempt whose caller went)."""
    app = coordinator
    draw(app, monkeypatch, 0)  # replay steps 0 → 2: reveal checkpoint 2
    job_id, _ = submit(app, files)
    signers = [Signer.generate() for _ in range(2)]
    for i, signer in enumerate(signers):
        app.store.nodes.register_node(signer.address, CPU, f"{i + 10:056x}{job_id[:8]}", 0, 10**12, f"n-{i}")

    original, stale = app.scheduler.task_record, {}

    async def task_record(task_id: str, node: str = "") -> TaskRecord:
        return stale.pop(task_id) if task_id in stale else await original(task_id, node)

    monkeypatch.setattr(app.scheduler, "task_record", task_record)

    async def scenario() -> Done:
        done = [compute(app, signer.address, tmp_path) for signer in signers]
        leased = app.store.tasks.get_task(done[0].lease.task_id)
        assert [await _hand_in(app, signer, d) for signer, d in zip(signers, done, strict=True)] == [(2,), (2,)]
        if read == "before":  # the repeat got the task as leased, before the first attempt committed
            stale[leased.task_id] = leased
        assert await _hand_in(app, signers[0], done[0]) == (2,)  # the answer again, nothing else
        assert await app.rounds.advance(job_id) == "auditing"
        for d in done:
            await reveal(app, d, 2)
            assert (await settled(app, d)).state == "passed"
        assert await app.rounds.advance(job_id) == "closed"  # not held until the deadline
        with pytest.raises(Rejected, match="lease is over"):  # nothing owed any more: refused as before
            await _hand_in(app, signers[0], done[0])
        return done[0]

    first = asyncio.run(scenario())
    assert credited(app, first.lease.task_id) == [signers[0].address]  # paid once
    assert app.store.nodes.get_node(signers[0].address).rejections == 0  # type: ignore[union-attr]


def test_a_repeat_of_an_accepted_result_is_refused_when_nothing_is_owed(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the node whose result it was, with that very output, is answered again."""
    app = coordinator
    draw(app, monkeypatch, 0)
    job_id, _ = submit(app, files)
    node, other = Signer.generate(), Signer.generate()
    for i, signer in enumerate((node, other)):
        app.store.nodes.register_node(signer.address, CPU, f"{i + 20:056x}{job_id[:8]}", 0, 10**12, f"m-{i}")

    async def scenario() -> None:
        d = compute(app, node.address, tmp_path)
        assert await _hand_in(app, node, d) == (2,)
        with pytest.raises(Rejected, match="does not hold"):  # another node's copy
            await _hand_in(app, other, replace(d, node=other.address))
        forged = replace(d, out=tmp_path / "other.out")
        forged.out.write_bytes(d.out.read_bytes()[:-1] + b"\0")
        with pytest.raises(Rejected, match="lease is over"):  # other bytes under the same lease
            await _hand_in(app, node, forged)

    asyncio.run(scenario())


def test_a_round_held_open_by_its_audits_says_which_results_wait_for_what(
    coordinator: Coordinator,
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What an operator (or the next engineer) sees of a round whose audits wait for reveals:
    a warning naming the results and the checkpoints missing, once it has been held slow_s."""
    app = coordinator
    draw(app, monkeypatch, 0)
    job_id, _ = submit(app, files)
    app.rounds.slow_s = 0.0

    async def scenario() -> None:
        for node in NODES[:2]:
            assert await deliver(app, compute(app, node, tmp_path)) is not None
        assert await app.rounds.advance(job_id) == "auditing"

    asyncio.run(scenario())
    (held,) = [r.getMessage() for r in caplog.records if "held open" in r.getMessage()]
    assert f"job {job_id[:12]} round 1 held open" in held
    assert held.count("checkpoints [2] not revealed") == 2 and NODES[0] in held and NODES[1] in held


def test_a_slow_advance_is_logged_with_the_step_it_waits_on(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One advance waits for the whole round manager (one loop for every job): past slow_s it
    is logged with the step it is at, here torch_lock held by an audit's replay."""
    app = coordinator
    job_id, _ = submit(app, files, verification=VerificationSpec(mode="none"))

    async def scenario() -> None:
        for node in NODES[:2]:
            assert await deliver(app, compute(app, node, tmp_path)) is None
        async with app.rounds.torch_lock:  # an audit's replay holds it
            advancing = asyncio.ensure_future(app.rounds.advance(job_id))
            for _ in range(2400):  # reading the round and its audits first: seconds on a loaded machine
                await asyncio.sleep(0.05)
                # the step that waits for the lock; the one before it names torch_lock too, and on a
                # loaded machine a poll saw that one (a 4-worker suite run failed so)
                if app.rounds._advancing is not None and "waiting for torch_lock" in app.rounds._advancing.step:
                    break
            else:
                raise AssertionError("the advance never reached torch_lock")
            app.rounds.check_slow(time.monotonic())  # not slow yet: nothing logged
            app.rounds.check_slow(time.monotonic() + app.rounds.slow_s + 1)
        assert await advancing == "closed"
        app.rounds.check_slow(time.monotonic() + 10 * app.rounds.slow_s)  # none under way: nothing

    asyncio.run(scenario())
    (slow,) = [r.getMessage() for r in caplog.records if "slow" in r.getMessage()]
    assert f"job {job_id[:12]} has been advanced for" in slow and "waiting for torch_lock" in slow


async def _nothing() -> AsyncIterator[bytes]:
    if False:  # pragma: no cover
        yield b""


def test_trusted_nodes_are_drawn_at_the_floor_and_mode_none_never(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path
) -> None:
    app = coordinator
    job_id, _ = submit(app, files, workers_per_round=4, rounds=1,
                       verification=VerificationSpec(trust_after=2, check_floor=0.0))  # fmt: skip
    set_job_price(app.store.engine, job_id, 1000, 10**6)
    with app.store.engine.begin() as conn:  # trusted for this job: a long paid streak from 3 other submitters
        conn.execute(s.reputation.insert().values(address=NODES[0], consecutive_valid=1000, verified=1000, caught=0))
        for k in range(3):
            row = dict(address=NODES[0], submitter=f"0x{k + 1:040x}", earned_wei=10**6, results=1000)
            conn.execute(s.trust_earnings.insert().values(**row))
        # the same streak with nothing paid behind it (farmed on free jobs) counts for nothing
        conn.execute(s.reputation.insert().values(address=NODES[1], consecutive_valid=1000, verified=1000, caught=0))
    with app.store.engine.connect() as conn:
        assert trust.streak_for_job(conn, NODES[1], job_id, 2) == 0 < trust.streak_for_job(conn, NODES[0], job_id, 2)
    drawn = 0
    for i in range(4):
        task = app.store.tasks.get_task(_task_id(job_id, i))
        drawn += asyncio.run(app.rounds.audits.plan(replace(task, attempt=1), NODES[0])) is not None
        assert asyncio.run(app.rounds.audits.plan(replace(task, attempt=1), NODES[1])) is not None  # untrusted: always
    assert drawn <= 1
    off, _ = submit(app, files, nonce="off", verification=VerificationSpec(mode="none"))
    assert asyncio.run(app.rounds.audits.plan(app.store.tasks.get_task(_task_id(off, 0)), NODES[1])) is None


def _task_id(job_id: str, idx: int) -> str:
    from tensorgrid.spec import task_id_for

    return task_id_for(job_id, idx)


class _Attention(torch.nn.Module):
    """Self-attention as torch ships it: MultiheadAttention's key bias shifts every score of a
    query alike, so softmax cancels it and its true gradient is zero: backward returns rounding
    noise, which differs with the thread count, and AdamW turns noise into steps of about lr."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 64)
        self.layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.embed(x.reshape(x.shape[0], 16, 4))
        return self.head(self.layer(seq).mean(1))


INERT_SETTINGS = replace(SETTINGS, steps=40, checkpoint_every=10)


@pytest.fixture(scope="module")
def inert(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PseudoGradient]:
    """An honest node's run (one thread) of the model with an inert parameter: made once, and
    replayed by each thread count's test."""
    root = tmp_path_factory.mktemp("inert")
    torch.manual_seed(0)
    export_program(_Attention().train(), (torch.randn(4, 64),), root / "attn.pt2")
    initial_weights(root / "attn.pt2", root / "w0.safetensors")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the node
        r = TRAINERS["honest"](
            root / "attn.pt2", root / "w0.safetensors", files["shard"], INERT_SETTINGS, root / "ckpt"
        )
    finally:
        torch.set_num_threads(old)
    write_result(r, root / "attn.out", "int8")
    return root, r


@pytest.mark.parametrize("replay_threads", [1, 2])
def test_an_honest_run_of_a_model_with_an_inert_parameter_passes_at_any_thread_count(
    files: dict[str, Path], inert: tuple[Path, PseudoGradient], replay_threads: int
) -> None:
    root, r = inert
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(replay_threads)  # the coordinator
        for j in range(len(r.checkpoint_steps) - 1):
            revealed = {s: root / "ckpt" / checkpoint_name(s) for s in reveal_plan(r.checkpoint_steps, j)}
            c = AuditCase(root / "attn.pt2", files["shard"], root / "w0.safetensors", root / "attn.out",
                          INERT_SETTINGS, r.final_commitment, j, revealed)  # fmt: skip
            finding = check_reveal(c)
            assert finding.passed, (j, finding.reason)
    finally:
        torch.set_num_threads(old)


def test_a_round_whose_only_results_wait_on_replays_past_its_deadline_stays_open(
    coordinator: Coordinator, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its deadline a round's results whose audits are still replaying are left out of the
    count, but they are not tasks that failed for good: with no task open and none usable yet, the
    round waits for the replays (it failed the job as if every task had ended: a good job and its
    honest nodes' pay lost to the referee being slow)."""
    app = coordinator
    draw(app, monkeypatch, 0)
    job_id, _ = submit(app, files, round_deadline_s=30, task_time_limit_s=30)

    async def scenario() -> None:
        done = [compute(app, node, tmp_path) for node in NODES[:2]]
        replay = app.rounds.audits.run

        async def under_way(audit: audit_store.Audit) -> str:  # their replays under way elsewhere
            return audit.state

        monkeypatch.setattr(app.rounds.audits, "run", under_way)
        for d in done:
            plan = await deliver(app, d)
            assert plan is not None
            for step in plan.steps:
                await reveal(app, d, step)
        later = now_ms() + 31_000
        monkeypatch.setattr(Runtime, "now_ms", staticmethod(lambda: later))
        assert await app.rounds.advance(job_id) == "open"
        assert app.store.jobs.get_job(job_id).state != JobState.FAILED
        monkeypatch.setattr(app.rounds.audits, "run", replay)  # the replays go on: they pass
        for _ in range(1200):  # the round closes once a replay has passed (bounded: a loaded machine)
            outcome = await app.rounds.advance(job_id)
            if outcome != "open":
                break
            await asyncio.sleep(0.05)
        assert outcome == "closed", outcome

    asyncio.run(scenario())
    assert app.store.jobs.get_job(job_id).state == JobState.RUNNING
    assert round_history(app.store.engine, job_id)[0]["workers"] >= 1
