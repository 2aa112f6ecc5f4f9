"""The serving child: `tensorgrid.sandbox.boot node.serving.worker` (started by node.serving.process).

It holds no key and gets no network (tensorgrid.sandbox), keeps one replica's program warm and
answers micro-batches over its pipes. On start it writes one JSON line {"ready": true, "pid"}
(as node.worker does, so the executor's spawn machinery can wait for it), then speaks binary
frames (node.serving.frames) until EOF on stdin:

    → {"op": "load", "model_path", "serves", "settings", "device", "threads", "memory_limit_bytes"}
    ← {"ok": true, "load_seconds"} | {"ok": false, "error_kind", "message"}

    → {"op": "run_batch", "sizes"} + one payload per request (safetensors bytes)
    ← {"ok": true, "results": [null | {"error_kind", "message"}, …], "sizes"} + one output per
      request (b"" for a failed one)

    → {"op": "data_link", "path", "max_batch"}: a Unix socket in the scratch directory that hands over the
      replica's data link (node.serving.direct serves it on a thread)
    ← {"ok": true} | {"ok": false, "error_kind", "message"}

    → {"op": "generate", "seed", "sizes"} + the prompt (safetensors bytes)
    ← {"op": "tokens", "tokens": [..]} per decoding step, then
      {"ok": true, "sizes"} + the output | {"ok": false, "error_kind", "message"}

A request's own failure is an answer, never fatal to the worker. A protocol error (a frame
that does not parse) ends the worker: its parent kills and replaces it.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
from typing import IO, Any

from node.serving.frames import encode, read_frame
from node.worker import MAX_MESSAGE_CHARS, _set_address_space, _volunteer_for_oom_killer, classify
from node.worker import prepare as prepare_worker
from tensorgrid import sched
from tensorgrid.sandbox.serve import protocol_fd

log = logging.getLogger("tensorgrid.node.serving.worker")

_served: Any = None  # node.serving.compute.Served, once loaded
_compute = threading.Lock()  # the pipe's batches and the data link's run one at a time


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error_kind": classify(exc).value, "message": f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS]}


def _load(header: dict[str, Any]) -> dict[str, Any]:
    """Load the replica's program (once per worker: a new replica gets a new worker)."""
    import torch

    from node.serving.compute import Served

    global _served
    threads = int(header.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    device = str(header.get("device") or "auto")
    # The replica's memory limit caps the address space from here on (CPU; see node.worker),
    # so a fast allocation fails as a clean MemoryError before the agent's RSS poll sees it.
    _set_address_space(int(header.get("memory_limit_bytes") or 0) if device != "cuda" else 0)
    started = time.perf_counter()
    _served = Served(str(header["model_path"]), str(header["serves"]), header.get("settings") or {}, device)
    return {"ok": True, "load_seconds": round(time.perf_counter() - started, 6)}


def _run_batch(payloads: list[bytes], out: IO[bytes]) -> None:
    from node.serving.compute import Failure

    with _compute:
        results = _served.run_batch(payloads)
    errors = [_error(r.error) if isinstance(r, Failure) else None for r in results]
    outputs = [b"" if isinstance(r, Failure) else r for r in results]
    _write(out, {"ok": True, "results": errors}, outputs)


def _generate(header: dict[str, Any], payloads: list[bytes], out: IO[bytes]) -> None:
    if len(payloads) != 1:
        raise ValueError("a generate frame carries exactly one prompt")

    def on_tokens(tokens: list[int]) -> None:
        _write(out, {"op": "tokens", "tokens": tokens})

    output = _served.generate(payloads[0], int(header.get("seed") or 0), on_tokens)
    _write(out, {"ok": True}, [output])


def _write(out: IO[bytes], header: dict[str, Any], payloads: list[bytes] | None = None) -> None:
    out.write(encode(header, payloads or ()))
    out.flush()


def handle(header: dict[str, Any], payloads: list[bytes], out: IO[bytes]) -> None:
    """Answer one frame on out; a failure of the request is an answer, never raised."""
    op = header.get("op")
    try:
        if op == "load":
            _write(out, _load(header))
        elif _served is None:
            raise RuntimeError("no program is loaded (send load first)")
        elif op == "run_batch":
            _run_batch(payloads, out)
        elif op == "data_link":
            stamps = header.get("trace") is True
            _write(out, _take_link(str(header.get("path") or ""), int(header.get("max_batch") or 1), stamps))
        elif op == "generate":
            _generate(header, payloads, out)
        else:
            raise ValueError(f"unknown op {op!r}")
    except Exception as exc:  # the request's failure (a bad program, a bad prompt), reported
        log.info("%s failed: %s", op, exc)
        _write(out, {"ok": False, **_error(exc)})


def serve(stdin: IO[bytes], out: IO[bytes]) -> None:
    """Answer frames until EOF."""
    while (frame := read_frame(stdin)) is not None:
        handle(*frame, out)


def _take_link(path: str, max_batch: int, stamps: bool = False) -> dict[str, Any]:
    """Take the data link the agent connected and authenticated (node.serving.process.attach_data):
    connect to its Unix socket in our scratch directory, receive the TCP socket, serve it on a
    thread (node.serving.direct) while the pipe keeps working."""
    from node.serving.direct import serve_link

    if _served is None or _served.serves != "inference":
        raise ValueError("a data link serves a loaded inference program only")
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    control.settimeout(5.0)
    control.connect(path)
    _, fds, _, _ = socket.recv_fds(control, 1, 1)
    if len(fds) != 1:
        raise ValueError("no socket came with the data link")
    link = socket.socket(fileno=fds[0])
    link.settimeout(None)
    control.settimeout(None)
    import torch

    # torch's thread count is per thread (OpenMP's): the link's thread takes the loaded one's,
    # else it runs with one per core and its spinning workers take the cores the request needs
    threads = torch.get_num_threads()
    args = (_served, _compute, link, control, threads, max(1, max_batch), stamps)
    threading.Thread(target=serve_link, args=args, daemon=True).start()
    return {"ok": True}


def prepare() -> None:
    """torch, the program loaders and the warm-program LRU, before "ready" (the sandbox calls it
    before capping the address space)."""
    prepare_worker()


def main() -> None:
    """Entry point of the child process."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="serving worker %(levelname)s %(message)s")
    _volunteer_for_oom_killer()
    out = os.fdopen(protocol_fd(), "wb")  # binary frames; fd 1 now points at stderr
    prepare()
    gc.freeze()  # torch's import-time objects: a full collection would otherwise pause a request
    sched.short_slice()  # the pipe's batches run on this thread (tensorgrid.sched)
    out.write(b'{"ready": true, "pid": %d}\n' % os.getpid())
    out.flush()
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
