"""The referee's re-runs made ahead of their rulings (services/verification/ahead.py): a ruling
takes the output only when it is the re-run it would make, still catches a wrong subject (after
the soundness runs), and re-runs as before when nothing, or something else, was run ahead.

The replay runs in process here (a row's output is twice its input: deterministic and row
independent); in the coordinator it runs in the sandboxed child."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.verification.checks import CheckPlan
from coordinator.repositories.verification.rulings import Ahead, LeasedShard, RulingInfo
from coordinator.services.verification.ahead import AheadRuns, run_key
from coordinator.services.verification.foresee import FORESEEN
from coordinator.services.verification.manager import Verification
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import BlobRef, Lease
from tensorgrid.workloads.tensorfile import gather_rows, load_tensors, save_tensors

ROWS = [5, 1, 9]  # the check's sample of the subject's shard
SETTINGS = {"task_kind": "inference", "batch_size": 4}
SUBJECT, CHECKER = "0x" + "aa" * 20, "0x" + "bb" * 20


@dataclass
class Referee:
    blobs: BlobStore
    model: str
    shard: str
    check: str
    subject: str
    replays: int = 0
    verification: Any = field(init=False)

    def __post_init__(self) -> None:
        self.verification = Verification(_Runtime(), _Store(), self.blobs, b"secret", None)  # type: ignore[arg-type]
        self.verification.add_replay("inference", self._replay)

    def _replay(self, model: Path, source: Path, out: Path, settings: dict[str, Any]) -> None:
        self.replays += 1
        save_tensors({"output": load_tensors(source)["x"] * 2}, out)

    def output(self, rows: torch.Tensor, tmp: Path, name: str) -> str:
        save_tensors({"output": rows}, tmp / name)
        return self.blobs.put_file(tmp / name).sha256

    def info(self, subject: str, checker: str, rows_limit: int) -> RulingInfo:
        return RulingInfo(
            check_id="c" * 64,
            job_id="j" * 64,
            model_sha=self.model,
            input_sha=self.check,
            settings=SETTINGS,
            subject_output=subject,
            rows=ROWS,
            checkers=[(CHECKER, checker)],
            rows_limit=rows_limit,
            shard_sha=self.shard,
            subject_node=SUBJECT,
        )

    def run_ahead(self, rows: int = len(ROWS)) -> None:
        job = Ahead("c" * 64, self.model, self.check, SETTINGS, rows)
        self.verification._make_ahead(job, run_key(job.model_sha, job.input_sha, job.rows, job.settings))


class _Runtime:
    db = None  # not used by what these tests run

    async def db_bulk(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def work(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    refereed = work


class _Store:
    """store.verification.ahead answers from `open` (check id → Ahead)."""

    def __init__(self) -> None:
        self.open: dict[str, Ahead] = {}
        self.verification = self

    def ahead(self, check_id: str) -> Ahead | None:
        return self.open.get(check_id)


@pytest.fixture
def referee(tmp_path: Path) -> Referee:
    blobs = BlobStore(tmp_path / "blobs")
    shard = {"x": torch.arange(48, dtype=torch.float32).reshape(12, 4)}
    save_tensors(shard, tmp_path / "shard.safetensors")
    gather_rows(tmp_path / "shard.safetensors", ROWS, tmp_path / "check.safetensors")
    save_tensors({"output": shard["x"] * 2}, tmp_path / "out.safetensors")
    (tmp_path / "model.pt2").write_bytes(b"not loaded: the replay here ignores it")
    put = blobs.put_file
    return Referee(
        blobs,
        put(tmp_path / "model.pt2").sha256,
        put(tmp_path / "shard.safetensors").sha256,
        put(tmp_path / "check.safetensors").sha256,
        put(tmp_path / "out.safetensors").sha256,
    )


def honest_rows(referee: Referee) -> torch.Tensor:
    return load_tensors(referee.blobs.path_for(referee.subject))["output"][ROWS]


def test_a_confirmation_takes_the_re_run_made_ahead(referee: Referee, tmp_path: Path) -> None:
    referee.run_ahead()
    assert referee.replays == 1
    checker = referee.output(honest_rows(referee), tmp_path, "checker.safetensors")
    ruling, how = referee.verification._reexecute(referee.info(referee.subject, checker, len(ROWS)))
    assert how == "ahead" and referee.replays == 1  # not run again
    assert ruling.subject_right and ruling.right_checkers == (CHECKER,) and not ruling.reason
    # taken once: a second ruling on the same rows re-runs them
    _, how = referee.verification._reexecute(referee.info(referee.subject, checker, len(ROWS)))
    assert how == "re-run" and referee.replays == 2


def test_a_colluding_pair_is_still_caught_after_the_soundness_runs(referee: Referee, tmp_path: Path) -> None:
    lie = load_tensors(referee.blobs.path_for(referee.subject))["output"].clone()
    lie[ROWS[0]] += 1
    subject = referee.output(lie, tmp_path, "lie.safetensors")
    checker = referee.output(lie[ROWS], tmp_path, "agrees.safetensors")
    referee.run_ahead()
    ruling, how = referee.verification._reexecute(referee.info(subject, checker, len(ROWS)))
    assert not ruling.subject_right and ruling.right_checkers == () and not ruling.reason
    assert referee.replays == 3  # ahead, then the subject's shard twice before blaming (no re-run of the check)
    assert how == "ahead"


def test_a_run_ahead_of_other_rows_is_not_taken(referee: Referee, tmp_path: Path) -> None:
    referee.run_ahead(rows=2)  # not what a ruling on all 3 rows runs
    checker = referee.output(honest_rows(referee), tmp_path, "checker.safetensors")
    ruling, how = referee.verification._reexecute(referee.info(referee.subject, checker, 0))
    assert how == "re-run" and referee.replays == 2 and ruling.subject_right


def test_queued_checks_are_run_ahead_once_and_settled_ones_skipped(referee: Referee) -> None:
    v = referee.verification
    store = v.store
    store.open["c" * 64] = Ahead("c" * 64, referee.model, referee.check, SETTINGS, len(ROWS))
    for check_id in ("0" * 64, "c" * 64, "c" * 64):  # a settled check, then one queued twice
        v.ahead.queue(check_id)
    assert asyncio.run(v._run_ahead()) is True and referee.replays == 1
    assert asyncio.run(v._run_ahead()) is False and referee.replays == 1  # the same re-run is kept already
    assert run_key(referee.model, referee.check, len(ROWS), SETTINGS) in v.ahead


def test_outputs_are_kept_up_to_a_bound_and_keys_tell_re_runs_apart(tmp_path: Path) -> None:
    runs = AheadRuns(tmp_path, kept=2)
    keys = [run_key("m", "i", 3, SETTINGS), run_key("m", "i", 2, SETTINGS), run_key("m", "i", 3, {"batch_size": 8})]
    assert len(set(keys)) == 3
    for i, key in enumerate(keys):
        (tmp_path / f"o{i}").write_bytes(b"x%d" % i)
        runs.put(key, tmp_path / f"o{i}")
    assert keys[0] not in runs and keys[1] in runs and keys[2] in runs  # the oldest was dropped
    assert runs.take(keys[2], tmp_path / "taken") and (tmp_path / "taken").read_bytes() == b"x2"
    assert not runs.take(keys[2], tmp_path / "again")


# ---- foresee.py: a leased shard's check re-run before its result (Verification.leased) -------

JOB, TASK = "j" * 64, "t" * 64


class _Leases(_Store):
    """store.verification.leased_shard answers from `held` ((task, attempt, node) → LeasedShard)
    and streak from `streaks`; store.verification.check_info finds no check answered."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[tuple[str, int, str], LeasedShard] = {}
        self.streaks: dict[str, int] = {}

    def leased_shard(self, task_id: str, attempt: int, node: str) -> LeasedShard | None:
        return self.held.get((task_id, attempt, node))

    def streak(self, node: str, job_id: str, trust_after: int) -> int:
        return self.streaks.get(node, 0)

    def check_info(self, task_id: str, node: str) -> None:
        return None


class _DbRuntime(_Runtime):
    db = _Runtime.db_bulk  # type: ignore[assignment]


def foreseeing(referee: Referee, spec: VerificationSpec | None = None) -> tuple[Verification, _Leases, Lease]:
    """The referee's Verification over a store where SUBJECT holds the lease of the shard (12 rows)."""
    store = _Leases()
    v = Verification(_DbRuntime(), store, referee.blobs, b"secret", None)  # type: ignore[arg-type]
    v.add_replay("inference", referee._replay)
    v.foresight.add("inference")  # as the inference kind does (coordinator/kinds/inference)
    v._policies[JOB] = (VerificationPolicy(spec or VerificationSpec(), 4, 0), 0)
    store.held[(TASK, 1, SUBJECT)] = LeasedShard(referee.model, referee.shard, 12, SETTINGS)
    model, shard = BlobRef(referee.model, 1), referee.blobs.ref(referee.shard)
    return v, store, Lease(JOB, TASK, 1, 0, "inference", model, shard)


def ruling_on(v: Verification, referee: Referee, plan: CheckPlan) -> RulingInfo:
    """The ruling pending() reads for a direct check opened from `plan`."""
    return RulingInfo(
        check_id=plan.check_task_id,
        job_id=JOB,
        model_sha=referee.model,
        input_sha=plan.input.sha256,
        settings=SETTINGS,
        subject_output=referee.subject,
        rows=list(plan.rows),
        checkers=[],
        rows_limit=len(plan.rows),
        shard_sha=referee.shard,
        subject_node=SUBJECT,
    )


def examine(v: Verification, referee: Referee, lease: Lease) -> CheckPlan:
    task = TaskRecord(TASK, JOB, 0, "leased", "inference", 1, SUBJECT, None, lease.input, 12)
    plan, verdict = asyncio.run(v.examine(task, SUBJECT, BlobRef(referee.subject, 1), referee_alone=True))
    assert plan is not None and plan.direct and verdict is None
    return plan


def test_a_leased_shards_check_is_re_run_before_its_result_and_its_ruling_only_compares(referee: Referee) -> None:
    v, _, lease = foreseeing(referee)
    v.leased([lease], SUBJECT)
    assert asyncio.run(v.foresight.next()) is True and referee.replays == 1
    assert asyncio.run(v.foresight.next()) is False  # nothing more queued
    plan = examine(v, referee, lease)  # the result comes: the same rows are drawn
    ruling, how = v._reexecute(ruling_on(v, referee, plan))
    assert how == "ahead" and referee.replays == 1 and ruling.subject_right


def test_a_wrong_result_is_still_caught_with_the_rows_re_run_before_it(referee: Referee, tmp_path: Path) -> None:
    v, _, lease = foreseeing(referee)
    v.leased([lease], SUBJECT)
    asyncio.run(v.foresight.next())
    plan = examine(v, referee, lease)
    lie = load_tensors(referee.blobs.path_for(referee.subject))["output"].clone()
    lie[plan.rows[0]] += 1
    info = ruling_on(v, referee, plan)
    info = RulingInfo(**{**info.__dict__, "subject_output": referee.output(lie, tmp_path, "lie.safetensors")})
    ruling, how = v._reexecute(info)
    assert how == "ahead" and not ruling.subject_right and not ruling.reason


def test_a_lease_given_back_a_trusted_node_and_an_unchecked_job_are_not_re_run(referee: Referee) -> None:
    v, store, lease = foreseeing(referee)
    v.leased([lease, Lease(JOB, "u" * 64, 1, 0, "inference", lease.model, lease.input)], SUBJECT)  # "u": not held
    del store.held[(TASK, 1, SUBJECT)]  # given back (or its result came, or it was reissued)
    assert asyncio.run(v.foresight.next()) is False and referee.replays == 0
    v, store, lease = foreseeing(referee)
    store.streaks[SUBJECT] = VerificationSpec().trust_after  # trusted: its check, if drawn, goes to a node
    v.leased([lease], SUBJECT)
    assert asyncio.run(v.foresight.next()) is False and referee.replays == 0
    v, store, lease = foreseeing(referee, VerificationSpec(mode="none"))
    v.leased([lease], SUBJECT)  # the policy is cached: not even queued
    assert not v.foresight.queue and asyncio.run(v.foresight.next()) is False and referee.replays == 0


def test_leases_queued_for_foresee_are_bounded_newest_kept(referee: Referee) -> None:
    v, _, lease = foreseeing(referee)
    many = [Lease(JOB, f"{i:064x}", 1, 0, "inference", lease.model, lease.input) for i in range(FORESEEN + 5)]
    v.leased(many, SUBJECT)
    v.leased([Lease(JOB, "c" * 64, 1, 0, "spotcheck", lease.model, lease.input)], SUBJECT)  # a check: not a shard
    assert len(v.foresight.queue) == FORESEEN and v.foresight.queue[-1][1] == many[-1].task_id
