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

from coordinator.repositories.verification.rulings import Ahead, RulingInfo
from coordinator.services.verification.ahead import AheadRuns, run_key
from coordinator.services.verification.manager import Verification
from tensorgrid.blobs import BlobStore
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
