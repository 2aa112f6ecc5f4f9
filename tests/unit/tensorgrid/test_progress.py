"""watch_job: a job nobody works on any more is not watched forever."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tensorgrid import progress
from tensorgrid.errors import TensorGridError


class _StalledClient:
    """A watch stream that yields one event and then never another (its nodes are gone)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def watch(self, job_id: str) -> Iterator[Any]:
        yield _event(1)
        self.release.wait(30)

    def job(self, job_id: str) -> str:
        return "final"


class _FinishingClient:
    def watch(self, job_id: str) -> Iterator[Any]:
        yield from (_event(1), _event(2))

    def job(self, job_id: str) -> str:
        return "final"


def _event(done: int) -> Any:
    return type("Ev", (), {"kind": "completed", "tasks_total": 2, "tasks_done": done, "task_index": 0, "message": ""})


def test_a_failing_health_check_ends_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "HEALTH_INTERVAL_S", 0.05)
    client = _StalledClient()
    calls = []

    def health() -> None:
        calls.append(1)
        if len(calls) >= 2:
            raise TensorGridError("node0 exited with 1")

    try:
        with pytest.raises(TensorGridError, match="node0 exited"):
            progress.watch_job(client, "ab" * 32, health=health)
    finally:
        client.release.set()
    assert len(calls) == 2


def test_a_healthy_watch_returns_the_final_state() -> None:
    calls = []
    assert progress.watch_job(_FinishingClient(), "ab" * 32, health=lambda: calls.append(1)) == "final"
    assert progress.watch_job(_FinishingClient(), "ab" * 32) == "final"


def test_a_watch_shows_claims_disproved_by_another_nodes_result(monkeypatch: pytest.MonkeyPatch) -> None:
    notes: list[str] = []
    real = progress.Progress

    class Recording(real):  # type: ignore[misc, valid-type]
        def update(self, task: Any, **fields: Any) -> None:
            notes.append(fields.get("note", ""))
            super().update(task, **fields)

    disproved = {"kind": "disproved", "tasks_total": 2, "tasks_done": 1, "task_index": 1}
    message = "3 claimants' claims disproved by a non-claimant's result: accepted (and checked as any result is)"

    class Client:
        def watch(self, job_id: str) -> Iterator[Any]:
            yield type("Ev", (), {**disproved, "message": message})

        def job(self, job_id: str) -> str:
            return "final"

    monkeypatch.setattr(progress, "Progress", Recording)
    progress.watch_job(Client(), "ab" * 32)
    assert notes[0].startswith("task 1 disproved: 3 claimants' claims disproved by a non-claimant's result")
