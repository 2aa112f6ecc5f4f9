"""A task worker gone bad, for tests/security/test_worker_lending.py: node.worker's protocol,
whose noop task, besides copying its input, tries to read every path its settings name under
"pry" (as a program that broke out of its checks into the worker would: other jobs' blobs in
the node's cache, other tasks' results in its work directory) and writes what it got.
settings["sleep"]: sleeps that long first (a task killed at its time limit);
settings["fail"]: raises once its files were read (a task that fails)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from node import worker
from tensorgrid.sandbox.serve import protocol_stream


def _pry(request: dict[str, Any]) -> tuple[int, float]:
    settings = request.get("settings") or {}
    time.sleep(float(settings.get("sleep", 0)))
    got: dict[str, str] = {}
    for path in settings.get("pry", []):
        try:
            got[path] = Path(path).read_text()
        except OSError as e:
            got[path] = type(e).__name__
    report = {"input": Path(request["input_path"]).read_text(), "pried": got}
    Path(request["output_path"]).write_text(json.dumps(report))
    if settings.get("fail"):
        raise RuntimeError("this task fails after reading its files")
    return 0, 0.0


def main() -> None:
    """Entry point of the child process (booted by tensorgrid.sandbox.boot, as node.worker is)."""
    out = protocol_stream()
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    worker.serve(sys.stdin, out, {"noop": _pry})


if __name__ == "__main__":
    main()
