"""A test-only sandbox entry point whose `prepare()` (the trusted imports' step) notes the CPU
priority it ran at and starts a thread, as torch's import may; each request is answered with
the priority prepare ran at and the priority of every thread the child has while it serves."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from tensorgrid.sandbox import serve_once

_seen: dict[str, Any] = {}
_stop = threading.Event()


def prepare() -> None:
    _seen["prepare_nice"] = os.nice(0)
    threading.Thread(target=_stop.wait, name="started-in-prepare", daemon=True).start()


def _report(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    tids = sorted(int(t) for t in os.listdir(f"/proc/{os.getpid()}/task"))
    return {**_seen, "thread_nices": [os.getpriority(os.PRIO_PROCESS, t) for t in tids]}


def main() -> None:
    serve_once(_report)
