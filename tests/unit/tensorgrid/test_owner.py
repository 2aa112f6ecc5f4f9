"""--owner (tensorgrid.owner): a daemon given it ends when its owner does, by SIGTERM, then SIGKILL;
one not given it outlives whoever started it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from coordinator import main as coordinator_main
from node import main as node_main
from tensorgrid import owner

# A stand-in daemon: watches its owner; `ignore` makes it deaf to SIGTERM (a stuck shutdown).
DAEMON = (
    "import signal, sys, time; from tensorgrid import owner; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN) if sys.argv[2] == 'ignore' else None; "
    "owner.watch(int(sys.argv[1]), grace_s=1.0); print('watching', flush=True); time.sleep(60)"
)


def ended_within(proc: subprocess.Popen[str], seconds: float) -> int | None:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize(("mode", "signal_name"), [("obey", "SIGTERM"), ("ignore", "SIGKILL")])
def test_a_daemon_ends_when_its_owner_does(mode: str, signal_name: str) -> None:
    parent = subprocess.Popen(["sleep", "60"])
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(parent.pid), mode], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline().strip() == "watching"
        time.sleep(0.3)
        assert daemon.poll() is None  # the owner runs: so does the daemon
        parent.kill()
        parent.wait()
        code = ended_within(daemon, 10)
        assert code == -getattr(signal, signal_name), code
    finally:
        for proc in (parent, daemon):
            proc.kill()
            proc.wait()


def test_an_owner_already_gone_ends_it_at_once() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(gone.pid), "obey"], stdout=subprocess.PIPE, text=True)
    try:
        assert ended_within(daemon, 10) is not None
    finally:
        daemon.kill()
        daemon.wait()


def test_no_owner_unless_given() -> None:
    """A daemon an operator or systemd starts has no owner: nothing watched."""
    assert coordinator_main.parse_args(["run"], env={}).owner == 0
    assert node_main.parse_args(["--keystore", "k.json", "run", "--coordinator", "127.0.0.1:1"], env={}).owner == 0
    assert owner.watch(0) is None
    assert coordinator_main.parse_args(["run", "--owner", "42"], env={}).owner == 42
    with pytest.raises(SystemExit):
        coordinator_main.parse_args(["run", "--owner", "-1"], env={})
