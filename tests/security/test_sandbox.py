"""The sandbox every stranger's graph runs in: what a child can and cannot reach.

The primitive is driven with a test-only entry point (tests.security.sandbox_payload); the
node's worker and the coordinator's referee are driven through real processes."""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

import pytest

from node.main import PASSWORD_ENV, read_password
from tensorgrid.sandbox import Isolation, SandboxFailure, SandboxLimits, run_once
from tensorgrid.sandbox.confine import landlock_abi

PAYLOAD = "tests.security.sandbox_payload"
LIMITS = SandboxLimits(memory_bytes=256 << 20, time_s=30.0)


def _run(request: dict[str, object], limits: SandboxLimits = LIMITS, **kw: object) -> dict[str, object]:
    return run_once(PAYLOAD, request, limits, **kw)  # type: ignore[arg-type]


def test_child_gets_a_scrubbed_environment_and_its_own_scratch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "hunter2")
    monkeypatch.setenv("TENSORGRID_NODE_KEYSTORE", "/somewhere/node-key.json")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-jobs")
    seen = _run({"act": "env"}, scratch_root=tmp_path)
    env = seen["env"]
    assert isinstance(env, dict)
    assert not [k for k in env if k.startswith("TENSORGRID_")], env
    assert "hunter2" not in str(env) and "AWS_SECRET_ACCESS_KEY" not in env
    scratch = Path(str(seen["scratch"]))
    assert seen["cwd"] == str(scratch) and env["HOME"] == env["TMPDIR"] == str(scratch)
    assert scratch.parent == tmp_path.resolve() and not scratch.exists()  # deleted afterwards


def test_child_inherits_no_file_descriptors(tmp_path: Path) -> None:
    held = os.open(tmp_path / "open-in-parent", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(held, True)  # even one marked inheritable stays behind
    try:
        fds = _run({"act": "fds"})["fds"]
    finally:
        os.close(held)
    assert isinstance(fds, list) and set(fds) <= {0, 1, 2, 3, 4}, fds  # stdio, the protocol pipe, listdir's own


@pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock: file confinement is documented as missing")
def test_child_reads_only_the_paths_it_was_given(tmp_path: Path) -> None:
    secret = tmp_path / "node-key.json"
    secret.write_text("keystore")
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "input").write_text("input rows")
    iso = Isolation().with_paths(readable=[granted])
    assert _run({"act": "read", "path": str(granted / "input")}, isolation=iso) == {"data": "input rows"}
    with pytest.raises(SandboxFailure) as refused:
        _run({"act": "read", "path": str(secret)}, isolation=iso)
    assert refused.value.kind == "error" and "PermissionError" in str(refused.value)
    with pytest.raises(SandboxFailure, match="PermissionError"):
        _run({"act": "read", "path": f"/proc/{os.getppid()}/environ"}, isolation=iso)  # not even its parent's


def test_child_cannot_open_a_socket_to_a_local_listener() -> None:
    status = _run({"act": "status"})
    if status.get("network") != "isolated":  # printed by pytest -rs: the reason the kernel gave
        pytest.skip(f"this kernel refuses a new network namespace: {status.get('network_reason')}")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        shared = _run({"act": "connect", "port": port}, isolation=Isolation(network="shared"))
        assert shared == {"connected": True}  # the listener is reachable without the sandbox
        with pytest.raises(SandboxFailure) as refused:
            _run({"act": "connect", "port": port})
    assert refused.value.kind == "error" and "unreachable" in str(refused.value).lower()


def test_child_is_stopped_at_its_memory_limit_and_cannot_lift_it() -> None:
    limits = SandboxLimits(memory_bytes=64 << 20, time_s=30.0)
    with pytest.raises(SandboxFailure) as over:
        _run({"act": "alloc", "bytes": 8 << 30}, limits)
    assert over.value.kind == "out_of_memory" and over.value.over_limit
    assert "MemoryError" in str(over.value)
    assert _run({"act": "alloc", "bytes": 16 << 20}, limits) == {"size": 16 << 20}  # within it: fine
    lifted = _run({"act": "rlimit"}, limits)
    assert lifted["lifted"] is False and int(str(lifted["hard"])) < 8 << 30


def test_child_is_killed_at_its_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(SandboxFailure) as late:
        _run({"act": "sleep", "seconds": 600}, SandboxLimits(time_s=1.0))
    assert late.value.kind == "timeout" and late.value.over_limit
    assert "time limit of 1s" in str(late.value)
    assert time.monotonic() - started < 60


def test_outputs_leave_the_scratch_directory_only_when_named(tmp_path: Path) -> None:
    dest = tmp_path / "result.txt"
    assert _run({"act": "write", "text": "rows"}, outputs={"out.txt": dest}) == {"written": True}
    assert dest.read_text() == "rows"


# -- the node's password -------------------------------------------------------------------


def test_password_file_is_read_and_the_environment_is_not_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    pw = tmp_path / "password"
    pw.write_text("correct horse\n")
    assert read_password(argparse.Namespace(password_file=pw)) == "correct horse"
    assert PASSWORD_ENV not in os.environ


def test_password_from_the_environment_is_dropped_once_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert read_password(argparse.Namespace(password_file=None)) == "from-env"
    assert PASSWORD_ENV not in os.environ  # no child started afterwards can inherit it
