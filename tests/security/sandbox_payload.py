"""A test-only entry point for the sandbox: `tensorgrid.sandbox.boot` runs it as a stranger's
program would run, and it reports what it could see and do. Each request names one act:

  env     - the environment it was given        read    - the bytes of request["path"]
  append  - append request["text"] to request["path"]
  connect - open a TCP connection to 127.0.0.1:request["port"]
  alloc   - allocate request["bytes"] (touching every page)
  sleep   - sleep request["seconds"]            write   - write request["text"] to out.txt
  spin    - keep a core busy for request["seconds"]
  rlimit  - try to lift its own address-space limit
  fds     - the file descriptors it holds       status  - what the sandbox could isolate
  remember - keep request["value"] in this process; answer what an earlier request kept
  ask_zygote - ask the zygote at request["path"] for a child (from a grandchild whose parent
            died first, with request["orphan"]): the zygote's answer
  kill    - send SIGKILL to request["pid"]
"""

from __future__ import annotations

import json
import os
import resource
import socket
import time
from pathlib import Path
from typing import Any

from tensorgrid.sandbox import serve_once
from tensorgrid.sandbox.policy import STATUS_FILE

_kept: dict[str, Any] = {}


def _ask_zygote(path: str, orphan: bool) -> str:
    """The zygote's answer to a request for a sibling with no confinement at all."""
    from tensorgrid.sandbox.forked import ZygoteRefused, ZygoteUnavailable, request_child

    config = {"entry": "tests.security.sandbox_payload", "scratch": "/tmp", "runtime": [], "limits": {}}
    config["isolation"] = {"network": "shared", "confine_files": False, "readable": [], "writable": []}
    if not orphan:
        try:
            conn, pid, fds = request_child(path, config, {})
        except (ZygoteRefused, ZygoteUnavailable) as e:
            return f"refused: {e}"
        return f"forked {pid}"
    r, w = os.pipe()
    if os.fork() == 0:  # the middle process exits at once: its child is an orphan
        if os.fork() == 0:
            time.sleep(0.2)
            os.write(w, _ask_zygote(path, False).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


def _act(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    act = request.get("act")
    if act == "remember":
        earlier = _kept.get("value")
        _kept["value"] = request["value"]
        return {"earlier": earlier}
    if act == "ask_zygote":
        return {"answer": _ask_zygote(str(request["path"]), bool(request.get("orphan")))}
    if act == "kill":
        os.kill(int(request["pid"]), 9)
        return {"killed": True}
    if act == "env":
        return {"env": dict(os.environ), "cwd": os.getcwd(), "scratch": str(scratch)}
    if act == "read":
        return {"data": Path(request["path"]).read_text()}
    if act == "append":
        with open(request["path"], "a") as f:
            f.write(str(request["text"]))
        return {"appended": True}
    if act == "connect":
        with socket.create_connection(("127.0.0.1", int(request["port"])), timeout=2.0):
            return {"connected": True}
    if act == "alloc":
        block = bytearray(int(request["bytes"]))  # zero-filled: every page is touched
        return {"size": len(block)}
    if act == "sleep":
        time.sleep(float(request["seconds"]))
        return {"slept": True}
    if act == "spin":
        until = time.process_time() + float(request["seconds"])
        while time.process_time() < until:
            pass
        return {"spun": True}
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
    if act == "fds":
        return {"fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))}
    if act == "nice":
        return {"nice": os.nice(0)}
    if act == "autogroup":  # e.g. "/autogroup-145 nice 0"
        return {"autogroup": Path("/proc/self/autogroup").read_text()}
    if act == "status":
        return dict(json.loads((scratch / STATUS_FILE).read_text()))
    raise ValueError(f"unknown act {act!r}")


def main() -> None:
    serve_once(_act)


if __name__ == "__main__":
    main()
