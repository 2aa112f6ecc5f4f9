"""A worker that misbehaves on request, to test the executor's supervision without torch.

Speaks node.worker's protocol; settings["act"] picks the misbehaviour:
  sleep   - never answers          hog     - grows memory until killed
  exit    - dies mid-task          garbage - answers with a non-JSON line
  chatter - floods stderr, then answers ok
"""

from __future__ import annotations

import json
import os
import sys
import time


def _act(request: dict[str, object]) -> None:
    settings = request.get("settings") or {}
    assert isinstance(settings, dict)
    act = settings.get("act")
    if act == "sleep":
        time.sleep(3600)
    elif act == "hog":
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024**2))  # bytearray zero-fills: pages are touched
            time.sleep(0.01)
    elif act == "exit":
        sys.stderr.write("about to fail\n" + "x" * 10_000 + "\nlast words\n")
        sys.stderr.flush()
        os._exit(3)
    elif act == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
        return
    elif act == "chatter":
        for _ in range(2000):  # ~200 KB: more than a pipe buffer holds
            sys.stderr.write("chatter " * 12 + "\n")
    reply = {"id": request["id"], "ok": True, "rows": 1, "seconds": 0.0}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def main() -> None:
    sys.stdout.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        _act(json.loads(line))


if __name__ == "__main__":
    main()
