"""The serving child's data link (child process only): requests straight from the coordinator.

tensorgrid.serving.datalink has the wire format. The agent connected and authenticated the
link, then handed it to this child (node.serving.worker's "data_link" op). Here, on a thread
of its own: read a ServeDown of requests, drop those past their deadline, run the rest as one
micro-batch (the lock keeps it apart from the pipe's batches), write the ServeUp of replies,
then tell the agent the batch's digests over the control socket, after the answer and together
with the other batches' of the last DIGESTS_EVERY_S: the agent signs each batch's receipt (it
holds the key, this child never does) and sends them up its Serve stream.
The coordinator pays a batch only when those digests match what it sent and received, as for
the pipe's batches.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from typing import Any

from node.serving.frames import encode
from tensorgrid import sched, serde
from tensorgrid.serving import batch_digest
from tensorgrid.serving.datalink import DIRECT_BATCH_BASE, DataLinkError, encode_frame
from tensorgrid.types import ErrorKind, TaskError
from tensorgrid.v1 import serving_pb2

__all__ = ["serve_link"]

log = logging.getLogger("tensorgrid.node.serving.worker")
MAX_DOWN_BYTES = 1 << 30  # a frame of requests (the coordinator bounds each by max_request_bytes)
CLOCK_ALLOWANCE_MS = 50  # as node.serving.batcher
DIGESTS_EVERY_S = 0.02  # a batch's digests reach the agent at most this long after its answer (_Digests)


def _error_reply(request_id: int, batch: int, error: TaskError) -> serving_pb2.ServeReply:
    return serving_pb2.ServeReply(request_id=request_id, done=True, batch=batch, error=serde.error_to_pb(error))


class _Frames:
    """The link's frames: block for the first, then take every one already there."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.poll = select.poll()  # the socket stays blocking: a timeout would make the drain below wait
        self.poll.register(sock, select.POLLIN)

    def _complete(self) -> list[bytes]:
        frames = []
        while len(self.buf) >= 4:
            n = int.from_bytes(self.buf[:4], "big")
            if n > MAX_DOWN_BYTES:
                raise DataLinkError(f"a frame of {n} bytes exceeds {MAX_DOWN_BYTES}")
            if len(self.buf) < 4 + n:
                break
            frames.append(bytes(self.buf[4 : 4 + n]))
            del self.buf[: 4 + n]
        return frames

    def next(self, timeout: float | None = None) -> list[bytes] | None:
        """At least one frame, with all that queued behind it; None at the link's end; [] if
        none came within `timeout` seconds (None: wait for one)."""
        while True:
            frames = self._complete()
            if frames:
                with contextlib.suppress(BlockingIOError):
                    while more := self.sock.recv(1 << 20, socket.MSG_DONTWAIT):
                        self.buf += more
                return frames + self._complete()
            if timeout is not None and (timeout <= 0 or not self.poll.poll(timeout * 1000)):
                return []
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                if self.buf:
                    raise DataLinkError("the data link closed inside a frame")
                return None
            self.buf += chunk


class _Digests:
    """The digests of the batches answered and not yet told to the agent. Told together, at
    most DIGESTS_EVERY_S after the first: one control message per batch woke the agent (its
    read, its header's parse, its timer) about as often as requests came, each time just as
    the reply it followed needed a core to reach the coordinator."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.pending: list[bytes] = []
        self.since = 0.0

    def add(self, digests: dict[str, Any]) -> None:
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append(encode(digests))

    def wait(self) -> float | None:
        """How long the link's read may wait before these are due (None: nothing pending)."""
        return max(0.0, self.since + DIGESTS_EVERY_S - time.monotonic()) if self.pending else None

    def flush(self) -> None:
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            self.control.sendall(data)


def serve_link(
    served: Any,
    compute: threading.Lock,
    link: socket.socket,
    control: socket.socket,
    threads: int,
    max_batch: int,
    stamps: bool = False,
) -> None:
    """Answer the link's requests until it closes (then the pipe alone serves). Requests that
    queued while a micro-batch ran form the next one, up to max_batch, as the agent's batcher
    does; threads: torch's intra-op threads, as the worker's main thread has them. stamps: each
    batch's digests also carry its perf_counter_ns stamps (read, run, ran, sent) for the agent's
    trace (tensorgrid.serving.trace)."""
    import torch

    torch.set_num_threads(threads)
    sched.short_slice()  # a request waits on this thread's every wake-up (tensorgrid.sched)
    frames, told = _Frames(link), _Digests(control)
    seq = 0
    try:
        while (got := frames.next(told.wait())) is not None:
            if not got:  # the link went quiet with digests pending
                told.flush()
                continue
            read_ns = time.perf_counter_ns()
            requests = [r for frame in got for r in serving_pb2.ServeDown.FromString(frame).requests]
            now_ms = time.time() * 1000 - CLOCK_ALLOWANCE_MS
            expired = [r for r in requests if r.deadline_ms and r.deadline_ms < now_ms]
            live = [r for r in requests if not (r.deadline_ms and r.deadline_ms < now_ms)]
            late = TaskError(ErrorKind.TIMEOUT, "past its deadline before it ran")
            replies = [_error_reply(r.request_id, 0, late) for r in expired]  # in no micro-batch
            if not live:
                link.sendall(encode_frame(serving_pb2.ServeUp(replies=replies).SerializeToString()))
            for at in range(0, len(live), max_batch):
                seq += 1
                batch, part = DIRECT_BATCH_BASE + seq, live[at : at + max_batch]
                run_ns = time.perf_counter_ns()
                outputs = _run(served, compute, part, batch, replies)
                ran_ns = time.perf_counter_ns()
                link.sendall(encode_frame(serving_pb2.ServeUp(replies=replies).SerializeToString()))
                replies = []
                # after the answer: the agent's wake-up and its signing are off the request's path
                ids, inputs = [r.request_id for r in part], [r.input for r in part]
                digests: dict[str, Any] = {
                    "batch": batch, "ids": ids, "in": batch_digest(inputs), "out": batch_digest(outputs)
                }  # fmt: skip
                if stamps:
                    digests["t"] = [read_ns, run_ns, ran_ns, time.perf_counter_ns()]
                told.add(digests)
            if told.wait() == 0.0:
                told.flush()
    except (DataLinkError, OSError, ValueError) as e:
        log.warning("the data link ended: %s", e)
    finally:
        with contextlib.suppress(OSError):
            told.flush()  # what was answered is owed its receipt
        link.close()
        control.close()


def _run(
    served: Any,
    compute: threading.Lock,
    live: list[serving_pb2.ServeRequest],
    batch: int,
    replies: list[serving_pb2.ServeReply],
) -> list[bytes]:
    """One micro-batch: its replies appended to `replies`; its outputs (b"" for a failed one)."""
    from node.serving.compute import Failure
    from node.worker import classify

    with compute:
        results = served.run_batch([r.input for r in live])
    outputs: list[bytes] = []
    for r, result in zip(live, results, strict=True):
        if isinstance(result, Failure):
            message = f"{type(result.error).__name__}: {result.error}"[:2000]
            replies.append(_error_reply(r.request_id, batch, TaskError(classify(result.error), message)))
            outputs.append(b"")
        else:
            replies.append(serving_pb2.ServeReply(request_id=r.request_id, output=result, done=True, batch=batch))
            outputs.append(result)
    return outputs
