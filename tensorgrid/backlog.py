"""What a server-streaming call has already queued, without waiting for what comes later.

WatchJob replays a job's recorded events at once and then follows it live unless asked for the
record only (`recorded_only`): a reader that wants only the record (`job status`, a training
job's round metrics) asks for that and, should the coordinator predate the field, stops once the
stream has been quiet for a moment, instead of waiting out a fixed deadline on every call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

_END = object()


def backlog(call: Any, idle_s: float) -> Iterator[Any]:
    """The messages of a synchronous server-streaming `call` until it ends or none has come for
    idle_s; the call is then cancelled. An RpcError the stream ends with is raised here."""
    messages: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def pump() -> None:
        try:
            for message in call:
                messages.put(message)
        except Exception as e:  # grpc.RpcError, including the cancel below: handed to the reader
            messages.put(e)
        messages.put(_END)

    threading.Thread(target=pump, name="tensorgrid-backlog", daemon=True).start()
    try:
        while True:
            try:
                item = messages.get(timeout=idle_s)
            except queue.Empty:
                return
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        call.cancel()
