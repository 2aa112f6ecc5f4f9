"""The sandboxed child's side of tensorgrid.sandbox.oneshot: greet, then answer each JSON request
line on the protocol stream (serve_once), an error the handler raises reported by its kind
(is_oom) and message, with the facts a handler adds to it (Reported: the answer's "details",
SandboxFailure.details on the parent's side).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tensorgrid.sandbox.oneshot import ERROR, OOM_MARKERS, OUT_OF_MEMORY

__all__ = ["Reported", "is_oom", "protocol_fd", "protocol_stream", "serve_once"]


class Reported(Exception):  # noqa: N818 - a failure reported with more, not a new kind of failure
    """A handler's failure, `error`, with facts the handler adds to its answer (`details`, JSON):
    reported as `error` is (its kind and message), the details besides. Only what the handler's
    own code counted belongs there: a stranger's program runs in the same process, so the parent
    bounds whatever it reads from them by what it knows itself."""

    def __init__(self, error: Exception, details: dict[str, Any]) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error, self.details = error, details


def is_oom(exc: BaseException) -> bool:
    """True when exc, or anything in its cause chain, is an allocation failure."""
    torch = sys.modules.get("torch")
    oom_types: tuple[type[BaseException], ...] = (MemoryError,)
    if torch is not None:
        oom_types += (torch.OutOfMemoryError,)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, oom_types):
            return True
        if isinstance(current, RuntimeError) and any(m in str(current).lower() for m in OOM_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def protocol_fd() -> int:
    """Take fd 1 for the protocol and point fd 1 at stderr, so stray native output (torch,
    BLAS, CUDA) cannot corrupt the answer; returns the protocol's own descriptor."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto_fd


def protocol_stream() -> IO[str]:
    """protocol_fd() as a line-buffered text stream (JSON lines)."""
    return os.fdopen(protocol_fd(), "w", buffering=1, encoding="utf-8")


def serve_once(handler: Callable[[dict[str, Any], Path], dict[str, Any]]) -> None:
    """Greet, then answer each JSON request line from stdin on the protocol stream until EOF
    (run_once sends one; a WarmSandbox many)."""
    out = protocol_stream()
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
            reply: dict[str, Any] = {"ok": True, "result": handler(request, Path.cwd())}
        except Exception as exc:  # noqa: BLE001 - everything the program does is reported, nothing escapes
            details: dict[str, Any] = {}
            if isinstance(exc, Reported):
                details, exc = exc.details, exc.error
            kind = OUT_OF_MEMORY if is_oom(exc) else ERROR
            reply = {"ok": False, "kind": kind, "message": f"{type(exc).__name__}: {exc}"[:2000]}
            if details:
                reply["details"] = details
        out.write(json.dumps(reply) + "\n")
        out.flush()
