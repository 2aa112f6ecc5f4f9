"""A test-only entry point for the sandbox: `tensorgrid.sandbox.boot` runs it as a stranger's
program would run, and it reports what it could see and do. Each request names one act:

  env     - the environment it was given        read    - the bytes of request["path"]
  connect - open a TCP connection to 127.0.0.1:request["port"]
  alloc   - allocate request["bytes"] in a torch tensor (touching it)
  sleep   - sleep request["seconds"]            write   - write request["text"] to out.txt
  rlimit  - try to lift its own address-space limit
"""

from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path
from typing import Any

from tensorgrid.sandbox import serve_once


def prepare() -> None:
    import torch  # noqa: F401 - trusted import before the memory cap, as the real entries do


def _act(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    act = request.get("act")
    if act == "env":
        return {"env": dict(os.environ), "cwd": os.getcwd(), "scratch": str(scratch)}
    if act == "read":
        return {"data": Path(request["path"]).read_text()}
    if act == "connect":
        with socket.create_connection(("127.0.0.1", int(request["port"])), timeout=2.0):
            return {"connected": True}
    if act == "alloc":
        import torch

        block = torch.ones(int(request["bytes"]) // 4, dtype=torch.float32)
        return {"sum": float(block.sum())}
    if act == "sleep":
        time.sleep(float(request["seconds"]))
        return {"slept": True}
    if act == "write":
        (scratch / "out.txt").write_text(str(request["text"]))
        return {"written": True}
    if act == "rlimit":
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError) as exc:
            return {"lifted": False, "hard": hard, "error": str(exc)}
        return {"lifted": True, "hard": hard}
    raise ValueError(f"unknown act {act!r}")


def main() -> None:
    serve_once(_act)


if __name__ == "__main__":
    main()
