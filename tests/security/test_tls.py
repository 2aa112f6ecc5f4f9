"""TLS over real processes: a TLS grid runs a job; a wrong CA, plain text to TLS, plain text
off loopback and a swapped EIP-712 domain are each refused with a clear error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer
from tensorgrid.localca import make_local_ca
from tensorgrid.localgrid import LocalGrid
from tests.integration.conftest import Assets, node_args
from tests.integration.test_inference import run_job

pytestmark = pytest.mark.integration
SHARED = pytest.mark.xdist_group("tls")  # share one module grid per worker (see make_module_grid)


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Callable[..., LocalGrid]) -> LocalGrid:
    g = make_module_grid(tls=True)
    g.start_coordinator()
    return g


@pytest.fixture
def grid(module_grid: LocalGrid) -> LocalGrid:
    """One TLS coordinator for the tests that each check only their own nodes and calls."""
    module_grid.check_running()
    return module_grid


def _wait_for_log(grid: LocalGrid, name: str, text: str, timeout: float = 240) -> str:
    proc = next(p for p in grid.procs if p.name == name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = proc.log_path.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{name} never logged {text!r}:\n{proc.log_tail()}")


@SHARED
@pytest.mark.timeout(600)  # a loaded machine takes minutes to warm two nodes
def test_a_tls_grid_runs_a_job_end_to_end(grid: LocalGrid, digits: Assets, tmp_path: Path) -> None:
    assert "serving TLS" in grid.procs[0].log_path.read_text()
    for i in range(2):
        grid.start_node(f"node{i}", *node_args())
    grid.wait_for_nodes(2, timeout=300)  # each warms its worker first: slow on a loaded machine
    run_job(grid, digits, tmp_path)
    with grid.client() as client:
        assert len(client.nodes()) == 2  # both nodes came in over TLS (a refused node never counts)


@SHARED
@pytest.mark.timeout(600)
def test_wrong_ca_and_plain_text_are_refused(grid: LocalGrid, tmp_path: Path) -> None:
    stranger_ca = make_local_ca(tmp_path / "stranger").ca_cert
    with Client(grid.target, ca_cert=stranger_ca) as client, pytest.raises(CoordinatorError) as wrong:
        client.nodes()
    assert wrong.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(wrong.value).startswith("TLS verification failed for coordinator: its certificate does not chain")
    # A plain-text client (loopback, no --ca-cert; or --insecure) cannot talk to a TLS server.
    for insecure in (False, True):
        with Client(grid.target, insecure=insecure) as client, pytest.raises(CoordinatorError) as plain:
            client.nodes()
        assert plain.value.code == grpc.StatusCode.UNAVAILABLE, plain.value
    # A node with the wrong CA never registers; it says why while it retries.
    with grid.client() as client:
        before = {n.address for n in client.nodes()}  # the grid's other nodes
    grid.start_node("lost", *node_args(), "--ca-cert", str(stranger_ca))
    _wait_for_log(grid, "lost", "TLS verification failed for coordinator")
    with grid.client() as client:
        assert {n.address for n in client.nodes()} == before


def _coordinator(tmp_path: Path, *args: str, wait_s: float = 60) -> tuple[subprocess.Popen[str], int | None]:
    """Start `tensorgrid-coordinator run` with args; returns it and its port (None if it exited)."""
    ready = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.main", "run", "--data-dir", str(tmp_path / "c"), "--ready-file", str(ready)]
        + ["--owner", str(os.getpid()), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + wait_s
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, int(ready.read_text()) if ready.exists() else None


def _refusal(tmp_path: Path, *args: str) -> str:
    proc, port = _coordinator(tmp_path, *args)
    out, _ = proc.communicate(timeout=60)
    assert port is None and proc.returncode == 1, out
    return out


def test_coordinator_refuses_plain_text_off_loopback_and_bad_certificates(tmp_path: Path) -> None:
    assert "refusing to serve plain text on 0.0.0.0:0" in _refusal(tmp_path, "--listen", "0.0.0.0:0")
    files = make_local_ca(tmp_path / "ca")
    missing = _refusal(tmp_path, "--listen", "0.0.0.0:0", "--tls-cert", str(tmp_path / "no.pem"), "--tls-key", "k")
    assert "cannot read --tls-cert" in missing
    swapped = _refusal(tmp_path, "--listen", "0.0.0.0:0", "--tls-cert", str(files.key), "--tls-key", str(files.cert))
    assert "--tls-cert" in swapped and "is not a PEM certificate" in swapped
    # the web dashboard follows the same rule, and is checked before anything starts
    dashboard = _refusal(tmp_path, "--listen", "127.0.0.1:0", "--dashboard-listen", "0.0.0.0:0")
    assert "refusing to serve plain text on 0.0.0.0:0" in dashboard


def test_a_client_refuses_plain_text_off_loopback(tmp_path: Path) -> None:
    """A coordinator on all addresses in plain text (--insecure, on purpose). A client that dials it
    by a name that is not loopback speaks TLS, so it fails, unless it too says --insecure."""
    proc, port = _coordinator(tmp_path, "--listen", "0.0.0.0:0", "--insecure")
    try:
        assert port is not None, proc.communicate(timeout=10)[0]
        target = f"{socket.gethostname()}:{port}"  # this machine, by a name that is not 'localhost'
        with Client(target, timeout=10) as client, pytest.raises(CoordinatorError) as refused:
            client.nodes()
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        with Client(target, insecure=True) as client:
            assert client.nodes() == []
        cli = [sys.executable, "-m", "tensorgrid.cli", "nodes", "--coordinator", target, "--key", str(tmp_path / "k")]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        plain = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=env)
        assert plain.returncode == 4 and "error:" in plain.stderr, plain.stderr
        allowed = subprocess.run([*cli, "--insecure"], capture_output=True, text=True, timeout=60, env=env)
        assert allowed.returncode == 0, allowed.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _deployment(path: Path, chain_id: int, registry: str) -> Path:
    signer = Signer.generate().address
    path.write_text(
        json.dumps(
            {
                "chainId": chain_id,
                "deployBlock": 1,
                "deployer": signer,
                "contracts": {"NodeRegistry": registry, "Settlement": signer},
                "roles": {"admin": signer, "coordinator": signer, "guardian": Signer.generate().address},
                "params": {
                    "minStakeWei": "1",
                    "unbondingDelay": 1,
                    "challengeWindow": 1,
                    "slashDelay": 1,
                    "maxSlashBps": 5000,
                },
                "compiler": "test",
                "sourceHash": "test",
            }
        )
    )
    return path


def test_a_node_refuses_a_swapped_eip712_domain(make_grid: Callable[..., LocalGrid], tmp_path: Path) -> None:
    """The coordinator (no chain) offers its own domain; a node whose deployments file names another
    contract refuses to register or sign, and exits saying why."""
    grid = make_grid(tls=True)
    grid.start_coordinator()
    other = _deployment(tmp_path / "deployments.json", 31337, "0x" + "42" * 20)
    node = grid.start_node("careful", *node_args(), "--deployment", str(other))
    assert node.popen.wait(120) == 1
    log = node.log_path.read_text()
    assert "refusing to sign: the coordinator's EIP-712 domain differs from the deployments file's" in log, log
    assert "verifyingContract" in log
    with grid.client() as client:
        assert client.nodes() == []
