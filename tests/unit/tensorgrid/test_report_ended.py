"""A training job that went on without a task that ended (failed for good: repositories.tasks.end_task,
job event `ended`) says so in `job status` and `job watch`: its tasks_total still counts that task, so
before, a job that succeeded read "9/10 done" with nothing to say where the tenth went."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tensorgrid import cli, progress
from tensorgrid.report import ended_tasks, tasks_line
from tensorgrid.types import JobEvent, JobInfo, JobState

JOB = "ab" * 32
WHY = "claims confirmed: out_of_memory: its program needs more than its memory limit of 1024 MiB"


def _job() -> JobInfo:
    return JobInfo(
        job_id=JOB, submitter="0x" + "11" * 20, kind="training", state=JobState.SUCCEEDED, spec_json=b"{}",
        spec_hash="00" * 32, created_ms=0, updated_ms=0, tasks_total=10, tasks_done=9, task_failures=3,
        result=None, error="",
    )  # fmt: skip


def _events() -> list[JobEvent]:
    said = [("completed", i, "") for i in range(9)] + [("reissued", 9, "unconfirmed out_of_memory"), ("ended", 9, WHY)]
    return [JobEvent(n + 1, JOB, kind, 0, task_index=i, message=m) for n, (kind, i, m) in enumerate(said)]


class _Client:
    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def job(self, job_id: str) -> JobInfo:
        return _job()

    def events_now(self, job_id: str) -> Iterator[JobEvent]:
        yield from _events()

    def watch(self, job_id: str) -> Iterator[JobEvent]:
        yield from _events()


def test_tasks_line_names_the_ended_tasks() -> None:
    assert ended_tasks(_events()) == 1
    assert tasks_line(_job()) == "9/10 done, 3 failed attempts"  # what every job without one reads
    assert tasks_line(_job(), 1) == (
        "9/10 done, 1 ended without a result (failed for good; the job went on without it), 3 failed attempts"
    )


@pytest.mark.parametrize("events", [10, 0])
def test_status_says_a_task_ended(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], events: int
) -> None:
    monkeypatch.setattr(cli, "_client", lambda ns: _Client())
    monkeypatch.setattr(cli, "job_id_of", lambda client, job_id: job_id)
    assert cli.cmd_status(argparse.Namespace(job_id=JOB, events=events, json=False)) == 0
    out = capsys.readouterr().out
    assert "9/10 done, 1 ended without a result" in out, out
    if events:
        assert f"task 9 ended: {WHY}" in out, out  # and why, among its notable events
    assert cli.cmd_status(argparse.Namespace(job_id=JOB, events=events, json=True)) == 0
    assert json.loads(capsys.readouterr().out)["tasks_ended"] == 1


def test_watch_says_a_task_ended(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_client", lambda ns: _Client())
    monkeypatch.setattr(cli, "job_id_of", lambda client, job_id: job_id)
    ended: set[int] = set()
    assert progress.watch_job(_Client(), JOB, ended=ended).tasks_done == 9 and ended == {9}
    assert cli.cmd_watch(argparse.Namespace(job_id=JOB)) == 0
    out: Any = capsys.readouterr().out
    assert "9/10 done, 1 ended without a result" in out, out
