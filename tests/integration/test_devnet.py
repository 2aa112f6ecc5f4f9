"""`tensorgrid devnet up|down` as a developer runs them, and a coordinator restarted with its own
command line: it comes back on the port its nodes dial, they carry on, and `down` stops it too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tensorgrid.cli", "devnet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.timeout(600)
def test_a_devnet_coordinator_restarted_with_its_command_line_is_found_again_and_stopped(tmp_path: Path) -> None:
    root = tmp_path / "devnet"
    up = _cli("up", "--nodes", "1", "--dir", str(root))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads((root / "devnet.json").read_text())
        coordinator_pid = next(p["pid"] for p in info["procs"] if "coordinator.main" in _cmdline(p["pid"]))
        argv = _cmdline(coordinator_pid)
        listen = argv[argv.index("--listen") + 1]
        assert listen == info["coordinator"] and not listen.endswith(":0"), argv
        assert not argv[argv.index("--bulk-listen") + 1].endswith(":0"), argv

        os.kill(coordinator_pid, signal.SIGKILL)  # a crash; then the operator starts it again, as it was
        restarted_ms = time.time() * 1000
        again = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            node = info["node_addresses"][0].lower()
            with Client(listen, Signer.generate(), ca_cert=info["ca_cert"]) as client:
                deadline = time.monotonic() + 120
                while True:  # the node finds it where it was and heartbeats it again
                    try:
                        seen = {n.address.lower(): n.last_seen_ms for n in client.nodes()}
                        if seen.get(node, 0) > restarted_ms:
                            break
                    except CoordinatorError:  # not serving yet
                        pass
                    assert time.monotonic() < deadline, "the node never came back"
                    time.sleep(0.5)
        finally:
            down = _cli("down", "--dir", str(root))
            assert down.returncode == 0, down.stdout + down.stderr
            # down stops what up started and the coordinator restarted by hand, which names its directory
            assert again.wait(30) is not None
            assert "stopped 3 processes" in down.stdout, down.stdout  # anvil, the node, the restarted coordinator
    finally:
        if (root / "devnet.json").exists():
            _cli("down", "--dir", str(root))
