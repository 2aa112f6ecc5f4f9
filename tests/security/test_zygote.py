"""The zygote (tensorgrid.sandbox.zygote) that forks sandboxed children: who could abuse it, and
how a requester copes when it is gone (THREAT_MODEL.md, "The sandbox's zygote"). Each test starts
a zygote of its own where it kills or opens it up; the isolation tests of test_sandbox.py run
under both ways of starting a child (the sandbox_start fixture)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tensorgrid.sandbox import SandboxLimits, WarmSandbox, launch, run_once
from tensorgrid.sandbox.forked import ForkedChild, ZygoteRefused, request_child
from tensorgrid.sandbox.policy import Isolation, Scratch, child_config, scrubbed_env
from tensorgrid.sandbox.zygote import MAX_REQUEST_BYTES
from tests.conftest import TEST_ENTRIES

PAYLOAD = "tests.security.sandbox_payload"
LIMITS = SandboxLimits(memory_bytes=256 << 20, time_s=30.0)


@pytest.fixture
def zygote(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, int]]:
    """A zygote of this test's own (socket, pid), used by every child the test starts."""
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="tg-zy-"))
    path = where / "z" / "sock"
    proc = launch.start_zygote(path, allow=TEST_ENTRIES, owner=os.getpid(), own_dir=True)
    assert launch.wait_ready(str(path), 120), "the zygote never answered"
    monkeypatch.setenv(launch.ZYGOTE_ENV, str(path))
    launch.reset()
    yield path, proc.pid
    monkeypatch.undo()
    launch.reset()
    proc.kill()
    proc.wait()
    shutil.rmtree(where, ignore_errors=True)


def _config(entry: str, scratch: Path) -> dict[str, object]:
    return child_config(entry, LIMITS, Isolation(), scratch)


def _ask(path: Path, payload: bytes, fds: int = 3) -> dict[str, object]:
    """Send one raw request with `fds` descriptors; the zygote's answer."""
    pipes = [os.pipe() for _ in range(fds)]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(30)
        conn.connect(str(path))
        socket.send_fds(conn, [payload], [r for r, _ in pipes])
        answer = json.loads(conn.recv(65536))
    for r, w in pipes:
        os.close(r)
        os.close(w)
    return dict(answer)


def test_the_socket_is_its_users_alone(zygote: tuple[Path, int]) -> None:
    path, _ = zygote
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)


def _connect_as_nobody(path: Path) -> str:
    """What another local user gets connecting to the zygote: an error name, or its answer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked test process
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
                conn.settimeout(10)
                conn.connect(str(path))
                conn.send(b"{}")
                answer = conn.recv(65536).decode() or "(hung up)"
        except OSError as e:
            answer = type(e).__name__
        os.write(w, answer.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another user needs root")
def test_another_local_user_cannot_use_it(zygote: tuple[Path, int]) -> None:
    path, _ = zygote
    assert _connect_as_nobody(path) == "PermissionError"  # its directory is 0700
    os.chmod(path.parent.parent, 0o755)
    os.chmod(path.parent, 0o777)  # an operator's mistake: the zygote still checks who connects
    os.chmod(path, 0o666)
    assert "own user only" in _connect_as_nobody(path)


def test_a_request_it_does_not_serve_is_refused_and_it_keeps_serving(zygote: tuple[Path, int], tmp_path: Path) -> None:
    path, _ = zygote
    good = {"config": _config(PAYLOAD, tmp_path), "env": {}}
    bad = [
        ({"config": _config("os", tmp_path), "env": {}}, 3, "not one this zygote runs"),
        ({"config": _config("node.light_worker", tmp_path), "env": {}}, 3, "not one this zygote runs"),
        ({**good, "env": {"A": 1}}, 3, "env must be"),
        ({"config": {**_config(PAYLOAD, tmp_path), "scratch": "relative"}, "env": {}}, 3, "scratch"),
        ({"config": {**_config(PAYLOAD, tmp_path), "limits": None}, "env": {}}, 3, "limits"),
        (good, 2, "exactly three descriptors"),
        ([1, 2], 3, "a request is"),
    ]
    for message, fds, why in bad:
        assert why in str(_ask(path, json.dumps(message).encode(), fds).get("error")), (message, why)
    assert "not JSON" in str(_ask(path, b"{nope").get("error"))
    oversize = json.dumps({**good, "pad": "x" * (MAX_REQUEST_BYTES + 1000)}).encode()
    assert "over" in str(_ask(path, oversize).get("error"))
    # still serving: a good request is forked
    assert run_once(PAYLOAD, {"act": "env"}, LIMITS)["scratch"]
    assert launch.started["forked"] > 0


def test_a_sandboxed_child_cannot_ask_the_zygote_for_an_unconfined_sibling(zygote: tuple[Path, int]) -> None:
    # The socket's path is reachable from a confined child (Landlock does not cover connecting to
    # a unix socket, nor a network namespace a path): the zygote refuses its descendants, an
    # orphaned grandchild included (the zygote is its subreaper).
    path, _ = zygote
    forked = launch.started["forked"]
    for orphan in (False, True):
        answer = run_once(PAYLOAD, {"act": "ask_zygote", "path": str(path), "orphan": orphan}, LIMITS)["answer"]
        assert "a sandboxed child may not start children" in str(answer), (orphan, answer)
    assert launch.started["forked"] == forked + 2  # the asking children were the zygote's


def test_a_child_sees_nothing_an_earlier_child_kept(zygote: tuple[Path, int]) -> None:
    # Each child is a fresh fork of a zygote that never ran a program: what one child keeps in
    # its memory (another submitter's data) is not in the next.
    assert run_once(PAYLOAD, {"act": "remember", "value": "secret of job A"}, LIMITS) == {"earlier": None}
    assert run_once(PAYLOAD, {"act": "remember", "value": "job B"}, LIMITS) == {"earlier": None}
    warm = WarmSandbox(PAYLOAD, LIMITS)  # one child, two requests: it does keep it (the act works)
    try:
        warm.call({"act": "remember", "value": "kept"})
        assert warm.call({"act": "remember", "value": "again"}) == {"earlier": "kept"}
    finally:
        warm.close()


def test_a_child_that_kills_the_zygote_loses_nothing(zygote: tuple[Path, int]) -> None:
    # Same user, so a child can signal the zygote: the next child is exec'd (shared socket gone),
    # and a warm child forked before it keeps answering; its end is seen through its pidfd.
    path, zpid = zygote
    warm = WarmSandbox(PAYLOAD, LIMITS)
    try:
        warm.warm()
        proc = warm._child.proc  # type: ignore[union-attr]
        assert isinstance(proc, ForkedChild)
        assert run_once(PAYLOAD, {"act": "kill", "pid": zpid}, LIMITS) == {"killed": True}
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zpid}").exists() and _state(zpid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert warm.call({"act": "env"})["scratch"]  # forked before, still serving
        execd = launch.started["execd"]
        assert run_once(PAYLOAD, {"act": "env"}, LIMITS)["scratch"]  # the next task runs
        assert launch.started["execd"] == execd + 1
    finally:
        warm.close()
    assert proc.orphaned and proc.returncode == -signal.SIGKILL


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_daemons_own_zygote_is_started_lazily_waited_for_and_restarted_when_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first child starts the process's own zygote and waits for it to warm up (forked, not
    exec'd beside it: torch imported once); a killed zygote loses no task (the child is exec'd)
    and is started again for the next child, which waits for it in turn."""
    monkeypatch.setenv(launch.ZYGOTE_ENV, "auto")
    launch.reset()
    launch.allow_in_own_zygote(TEST_ENTRIES)
    try:
        before = dict(launch.started)
        assert run_once(PAYLOAD, {"act": "env"}, LIMITS)  # its zygote starts, and this child waits for it
        own = launch.own_zygote()
        assert own is not None and own.poll() is None
        assert (launch.started["forked"], launch.started["execd"]) == (before["forked"] + 1, before["execd"])
        own.kill()  # by its pid
        own.wait()
        assert run_once(PAYLOAD, {"act": "env"}, LIMITS)  # no task lost: a new zygote starts, waited for
        again = launch.own_zygote()
        assert again is not None and again.pid != own.pid
        assert (launch.started["forked"], launch.started["execd"]) == (before["forked"] + 2, before["execd"])
    finally:
        launch.allow_in_own_zygote(())
        monkeypatch.undo()
        launch.reset()


def test_a_child_is_execd_when_its_own_zygote_dies_while_warming(monkeypatch: pytest.MonkeyPatch) -> None:
    """An own zygote that dies before it answers keeps no child waiting for it: the child is
    exec'd as soon as the zygote is seen gone (not after OWN_WARM_WAIT_S)."""
    monkeypatch.setenv(launch.ZYGOTE_ENV, "auto")
    monkeypatch.setattr(launch, "start_zygote", lambda *a, **k: subprocess.Popen(["/bin/false"]))
    launch.reset()
    try:
        before = dict(launch.started)
        started = time.monotonic()
        assert run_once(PAYLOAD, {"act": "env"}, LIMITS)
        assert time.monotonic() - started < launch.OWN_WARM_WAIT_S / 2
        assert (launch.started["forked"], launch.started["execd"]) == (before["forked"], before["execd"] + 1)
    finally:
        monkeypatch.undo()
        launch.reset()


def test_the_zygote_reports_each_childs_end(zygote: tuple[Path, int], tmp_path: Path) -> None:
    path, _ = zygote
    with Scratch(tmp_path) as scratch:
        child = ForkedChild(*request_child(str(path), _config(PAYLOAD, scratch.path), scrubbed_env(scratch.path)))
        assert child.stdout is not None and json.loads(child.stdout.readline())["ready"] is True
        assert child.stdin is not None
        child.stdin.close()  # EOF: it exits 0
        assert child.wait(30) == 0 and child.usage["maxrss_kb"] > 0
    with pytest.raises(ZygoteRefused):
        request_child(str(path), _config("os", tmp_path), {})


def test_off_execs_every_child_and_asks_no_zygote(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(launch.ZYGOTE_ENV, "off")
    launch.reset()
    before = dict(launch.started)
    try:
        with caplog.at_level("WARNING", logger="tensorgrid.sandbox"):
            for _ in range(2):
                assert run_once(PAYLOAD, {"act": "env"}, LIMITS)["scratch"]
        assert launch.started["forked"] == before["forked"]
        assert launch.started["execd"] == before["execd"] + 2
        assert launch.own_zygote() is None  # none started
        assert not [r for r in caplog.records if "zygote" in r.getMessage()]  # none asked, none missed
    finally:
        monkeypatch.undo()
        launch.reset()


def test_devnet_up_starts_one_shared_zygote_for_its_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tensorgrid import devnet, processes

    monkeypatch.delenv(launch.ZYGOTE_ENV, raising=False)
    pid = devnet._start_zygote(tmp_path)
    try:
        assert pid and os.environ[launch.ZYGOTE_ENV] == str(tmp_path / "zygote" / "sock")  # what its grid inherits
        assert launch.wait_ready(os.environ[launch.ZYGOTE_ENV], 120)
        assert pid in {p.pid for p in processes.naming(tmp_path)}  # `devnet down` finds and stops it
    finally:
        os.kill(pid, signal.SIGKILL)
        monkeypatch.undo()
    monkeypatch.setenv(launch.ZYGOTE_ENV, "off")  # an operator's setting wins: none started
    assert devnet._start_zygote(tmp_path) == 0


def test_a_daemons_setting_decides_over_the_environment(sandbox_zygote: str) -> None:
    """launch.configure (a daemon's --sandbox-zygote) wins over TENSORGRID_SANDBOX_ZYGOTE: off
    execs the child though the environment names the suite's zygote, ready to fork it."""
    if sandbox_zygote.lower() in launch.OFF:
        pytest.skip("TENSORGRID_SANDBOX_ZYGOTE is off for this run")
    assert launch.wait_ready(sandbox_zygote, 120), "the session's zygote never answered"
    try:
        launch.configure("off")
        before = dict(launch.started)
        assert run_once(PAYLOAD, {"act": "env"}, LIMITS)
        assert (launch.started["forked"], launch.started["execd"]) == (before["forked"], before["execd"] + 1)
    finally:
        launch.configure(None)


def test_a_forked_childs_cpu_time_is_read_as_an_execd_ones(zygote: tuple[Path, int]) -> None:
    """WarmSandbox.last_cpu_s of a child the zygote forked: its own CPU time on the call (the
    referee's reviews judge a program's speed by it), not a stranger's process nor nothing."""
    warm = WarmSandbox(PAYLOAD, LIMITS)
    try:
        warm.call({"act": "spin", "seconds": 0.4})
        spun = warm.last_cpu_s()
        assert spun is not None and 0.35 <= spun < 5, spun
    finally:
        warm.close()
