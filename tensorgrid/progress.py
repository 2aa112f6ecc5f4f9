"""Live progress for long uploads, downloads and job watching (rich, on stderr)."""

from __future__ import annotations

import queue
import threading
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

from tensorgrid.report import event_note
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


def watch_job(
    client: Any, job_id: str, health: Callable[[], None] | None = None, ended: set[int] | None = None
) -> JobInfo:
    """Follow a job's events with a progress bar until it ends; returns its final state. `ended`,
    when given, gets the index of each task that ended without a result (its `ended` event: the
    bar stops short of its total by them).

    health, when given, is called every HEALTH_INTERVAL_S while no event arrives and may raise
    (e.g. LocalGrid.check_running when a process it started died): a job no process works on
    any more must not be watched forever.
    """
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=_console) as progress:
        bar = progress.add_task(f"job {job_id[:12]}", total=None, note="")
        for ev in _events(client, job_id, health):
            note = event_note(ev)
            if ended is not None and ev.kind == "ended":
                ended.add(ev.task_index)
            progress.update(bar, total=ev.tasks_total or None, completed=ev.tasks_done, note=note)
    return client.job(job_id)  # type: ignore[no-any-return]


HEALTH_INTERVAL_S = 2.0
_END = object()


def _events(client: Any, job_id: str, health: Callable[[], None] | None) -> Iterator[Any]:
    """client.watch(job_id), with health() called between events (the stream runs in a thread)."""
    if health is None:
        yield from client.watch(job_id)
        return
    events: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        try:
            for ev in client.watch(job_id):
                events.put(ev)
            events.put(_END)
        except BaseException as exc:  # handed to the reader, raised there
            events.put(exc)

    threading.Thread(target=pump, name="watch-job", daemon=True).start()
    while True:
        try:
            item = events.get(timeout=HEALTH_INTERVAL_S)
        except queue.Empty:
            health()
            continue
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
