"""Live progress for long uploads, downloads and job watching (rich, on stderr)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from tensorgrid.types import JobInfo

_console = Console(stderr=True)


@contextmanager
def byte_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A callback (done, total) drawing one transfer bar per file."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=_console, transient=True) as progress:
        state: dict[str, Any] = {"task": None, "total": -1}

        def update(done: int, total: int) -> None:
            if state["task"] is None or total != state["total"] or done < progress.tasks[-1].completed:
                state["task"] = progress.add_task(label, total=total)
                state["total"] = total
            progress.update(state["task"], completed=done)

        yield update


def watch_job(client: Any, job_id: str) -> JobInfo:
    """Follow a job's events with a progress bar until it ends; returns its final state."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=_console) as progress:
        bar = progress.add_task(f"job {job_id[:12]}", total=None, note="")
        for ev in client.watch(job_id):
            note = ev.kind if ev.kind != "completed" else ""
            if ev.kind in ("reissued", "released"):
                note = f"task {ev.task_index} {ev.kind}: {ev.message[:60]}"
            progress.update(bar, total=ev.tasks_total or None, completed=ev.tasks_done, note=note)
    return client.job(job_id)  # type: ignore[no-any-return]
