"""Helpers shared by the benchmarks: baseline processes, timing, the closing JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def baseline_process(root: Path, mode: str, path: Path | None = None, *extra: str) -> Iterator[int]:
    """Start `python -m benchmarks._raw MODE [extra…]` and yield its port; stop it afterwards."""
    port_file = root / f"{mode}.port"
    port_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "benchmarks._raw", mode, "--port-file", str(port_file), *extra]
    if path is not None:
        args += ["--path", str(path)]
    proc = subprocess.Popen(args)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"baseline {mode} did not start")
            time.sleep(0.05)
        yield int(port_file.read_text())
    finally:
        proc.terminate()
        proc.wait(10)


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object as the last line."""
    print(json.dumps(result, sort_keys=True))
