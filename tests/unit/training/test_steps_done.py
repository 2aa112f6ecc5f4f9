"""How far a training task's run got before it failed (issue 11: an honest node is paid for the
work a submitter's failing program takes), from the referee's real sandboxed children running the
real training runner: a part that raises says the inner steps it did before (its error answer's
"step": tensorgrid.sandbox.serve.Reported, SandboxFailure.details); a measured part killed for its
memory cannot answer, so it writes them to a progress file its parent reads while it runs
(Measured.progress: those read while its peak was still within the mark). Before, neither was
said: a task that fit one part paid its claimants nothing. The coordinator bounds both
(review_parts.steps_done: tests/unit/coordinator/test_steps_pay.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.services import sandbox_child
from coordinator.services.sandboxed import ENTRY
from tensorgrid.sandbox import SandboxFailure, SandboxLimits, WarmSandbox, measured
from tensorgrid.sandbox.measured import run_measured
from tensorgrid.sandbox.oneshot import ERROR
from tensorgrid.sandbox.policy import PROGRESS_FILE
from tensorgrid.sandbox.serve import Reported
from tensorgrid.training.task import run_task_for
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.unit.training import test_inner
from tests.unit.training.conftest import Digits
from tests.unit.training.test_inner import SETTINGS
from tests.unit.training.test_task import leased

shards = test_inner.files  # the fixture: (round weights, a shard of digits)
K = 4  # the step that fails, of SETTINGS.steps (7)
LIMITS = SandboxLimits(time_s=120.0, memory_bytes=6 << 30, threads=1)
MiB = 1 << 20


def nan_at(shard: Path, step: int, out: Path) -> Path:
    """The shard with NaN features in the first row inner step `step` reads (a step reads rows
    step × batch on, in order): the submitter's data makes the run diverge at that step, and the
    runner raises there (PROGRAM_ERROR: "training diverged: loss is nan at step ...")."""
    tensors = load_tensors(shard)
    features = tensors["features"].clone()
    features[step * SETTINGS.batch_size] = float("nan")
    save_tensors({**tensors, "features": features}, out)
    return out


def request(digits: Digits, weights: Path, shard: Path, **more: Any) -> dict[str, Any]:
    """A referee's part of the task from its start (sandboxed.train_for_request's)."""
    settings = leased(shard)
    return {
        "op": "train_for", "program": str(digits.train_program), "weights": str(weights), "shard": str(shard),
        "settings": settings, "state": None, "seconds": 60.0, **more,
    }  # fmt: skip


@pytest.fixture
def box(tmp_path: Path) -> Iterator[WarmSandbox]:
    b = WarmSandbox(ENTRY, LIMITS, scratch_root=tmp_path, lend=True)
    yield b
    b.close()


def test_the_runner_tells_the_steps_done_before_the_step_that_raises(
    digits: Digits, shards: tuple[Path, Path], tmp_path: Path
) -> None:
    weights, shard = shards
    bad = nan_at(shard, K, tmp_path / "bad.safetensors")
    told: list[int] = []
    with pytest.raises(Exception, match=f"loss is nan at step {K}"):
        run_task_for(
            digits.train_program, weights, bad, leased(bad), tmp_path / "out", seconds=60, device="cpu",
            on_step=told.append,
        )  # fmt: skip
    assert told == list(range(K + 1))  # where it stood, then each step done; the raising one is not


@pytest.mark.timeout(300)  # the child imports torch on a loaded machine
def test_a_part_that_raises_in_the_referees_child_says_the_steps_it_did(
    digits: Digits, shards: tuple[Path, Path], tmp_path: Path, box: WarmSandbox
) -> None:
    """One part of the whole task (it fits one request) whose step K raises: its error answer
    says K steps were done. On main it said nothing: the review paid for 0 of 7 steps."""
    weights, shard = shards
    bad = nan_at(shard, K, tmp_path / "bad.safetensors")
    with pytest.raises(SandboxFailure) as failed:
        box.call(request(digits, weights, bad), inputs=(digits.train_program, weights, bad))
    assert failed.value.kind == ERROR and f"loss is nan at step {K}" in str(failed.value), failed.value
    assert failed.value.details == {"step": K}
    # a program that fails before the run stands at a step (its weights unreadable) says nothing more
    with pytest.raises(SandboxFailure) as early:
        box.call(request(digits, bad, bad), inputs=(digits.train_program, bad))
    assert early.value.kind == ERROR and early.value.details == {}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("forge", "progress"), [(None, K), (999, 999), (0, K)], ids=["honest", "up", "down"])
def test_a_measured_part_killed_for_its_memory_leaves_the_steps_it_did_before(
    digits: Digits, shards: tuple[Path, Path], tmp_path: Path, forge: int | None, progress: int
) -> None:
    """A real measured child (the coordinator's own child code) whose program grows without bound at
    inner step K: killed at the stop mark, it cannot answer; its parent read the K steps done from
    its progress file while its peak was within the mark. A program may write the file itself: a
    count above what it did is read (the coordinator bounds it by the part's steps), one below is
    not (the parent keeps the highest it read). On main nothing was read: the part paid nothing."""
    weights, shard = shards
    box = WarmSandbox("tests.unit.training.growing_child", LIMITS, scratch_root=tmp_path, lend=True)
    try:
        asked = request(digits, weights, shard, most_steps=SETTINGS.steps, progress=True, grow_at=K, forge=forge)
        m = run_measured(
            box,
            asked,
            stop_at_bytes=1536 * MiB,
            mark_at_bytes=1024 * MiB,
            inputs=(digits.train_program, weights, shard),
        )
    finally:
        box.close()
    assert m.stopped and m.answer is None and m.crossed_s is not None, m
    assert m.progress == progress, m


def test_the_steps_written_are_replaced_whole(digits: Digits, shards: tuple[Path, Path], tmp_path: Path) -> None:
    """The child's own count, in process (sandbox_child._train_for): each step's count replaces the
    file whole, and the error answer carries the last (sandbox.serve.Reported)."""
    weights, shard = shards
    bad = nan_at(shard, K, tmp_path / "bad.safetensors")
    with pytest.raises(Reported) as failed:
        sandbox_child._handle(request(digits, weights, bad, progress=True), tmp_path)
    assert failed.value.details == {"step": K} and "loss is nan" in str(failed.value.error)
    assert (tmp_path / PROGRESS_FILE).read_text() == str(K) and not list(tmp_path.glob("*.new"))


@pytest.mark.parametrize("kind", ["fifo", "symlink", "huge", "text"])
def test_a_progress_file_a_program_made_strange_is_no_count_and_never_holds_the_poller(
    tmp_path: Path, kind: str
) -> None:
    """The child owns its scratch: a program may make the progress file a FIFO (a plain open waits
    for a writer forever: the poller, and the kill it owes, would hang with it), a symlink to a
    file of the coordinator's, or fill it. None is waited on; only digits in a regular file are a
    count (at most 32 read: a huge one is the coordinator's to bound, review_parts.steps_done)."""
    path, target = tmp_path / PROGRESS_FILE, tmp_path / "elsewhere"
    target.write_text("5")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        path.write_text("7" * 10_000 if kind == "huge" else "seven")
    read: list[int | None] = []
    poller = threading.Thread(target=lambda: read.append(measured._progress(tmp_path)), daemon=True)
    poller.start()
    poller.join(10.0)
    assert read == [int("7" * 32) if kind == "huge" else None], read
