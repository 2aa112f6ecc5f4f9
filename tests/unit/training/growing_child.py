"""A test-only sandbox entry: the coordinator's own sandboxed child (services.sandbox_child), in
which a training task's inner step request["grow_at"] first writes request["forge"] to the part's
progress file when given (a hostile program can: it runs in this process), then allocates memory
until the parent kills the child: a program that grows past its memory limit at that step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from coordinator.services import sandbox_child
from tensorgrid.sandbox import serve_once
from tensorgrid.sandbox.policy import PROGRESS_FILE
from tensorgrid.training import inner

CHUNK = 64 << 20
MOST = 3 << 30  # a bound of its own, should the parent not kill it


def main() -> None:
    step = inner._Run.train_step
    asked: dict[str, Any] = {}

    def growing(run: inner._Run) -> float:
        if run.step == asked["grow_at"]:
            time.sleep(0.5)  # the parent polls every 20 ms: it reads the true count while within the limit
            if asked.get("forge") is not None:
                Path(PROGRESS_FILE).write_text(str(asked["forge"]))
                time.sleep(0.5)  # and the forged one
            held = []
            while len(held) * CHUNK < MOST:
                held.append(bytearray(CHUNK))  # zero-filled: every page touched
                time.sleep(0.02)
        return step(run)

    def handle(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
        asked.update(grow_at=request.pop("grow_at"), forge=request.pop("forge", None))
        return sandbox_child._handle(request, scratch)

    inner._Run.train_step = growing  # type: ignore[method-assign]
    serve_once(handle)
