"""Start a sandboxed child: forked by a zygote (tensorgrid.sandbox.zygote) where one serves,
else exec'd (`python -m tensorgrid.sandbox.boot`). Both confine it the same way (boot.run).

TENSORGRID_SANDBOX_ZYGOTE (read when a child first starts), or a daemon's --sandbox-zygote (the
same setting: tensorgrid.config.SANDBOX_ZYGOTE; `configure`), says which zygote:
  unset or "auto": this process's own, started (by exec, in the background) when its first
      child starts, restarted if it dies; a child that starts while it warms up waits for it
      (up to OWN_WARM_WAIT_S: its imports take what the child's own would, so the child is no
      later, and torch is imported once, not twice at once), and is exec'd if it dies or is late;
  a path: the shared zygote listening there (`tensorgrid devnet up` and the test suite start
      one for every process on the host); children are exec'd while it does not answer;
  "off" (or "exec", "0"): every child by exec.
A child start never fails because of a zygote: whatever goes wrong with it (gone, refusing,
still starting), the child is exec'd, with one warning per process for a zygote that cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tensorgrid.sandbox.forked import AsyncForkedChild, ForkedChild, ZygoteRefused, ZygoteUnavailable, request_child
from tensorgrid.sandbox.policy import ENV_ALLOWLIST, PROJECT_ROOT

log = logging.getLogger("tensorgrid.sandbox")
ZYGOTE_ENV = "TENSORGRID_SANDBOX_ZYGOTE"
OFF = frozenset({"off", "exec", "0", "no", "false"})
MAX_OWN_STARTS = 3  # an own zygote that keeps dying is given up on (children are exec'd)
OWN_WARM_WAIT_S = 60.0  # a child waits this long at most for its process's own zygote to warm up


def boot_argv(config: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tensorgrid.sandbox.boot", json.dumps(config)]


def start_zygote(
    path: Path, allow: tuple[str, ...] = (), stderr: Any = None, owner: int = 0, own_dir: bool = False
) -> subprocess.Popen[bytes]:
    """Exec a zygote listening at `path`: a new session, no descriptor of ours, and only the
    allowlisted environment (it holds no secret; its children are given their own). own_dir:
    `path`'s directory was made for it (a temporary one), and goes when it ends."""
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.update(PYTHONPATH=str(PROJECT_ROOT), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    argv = [sys.executable, "-m", "tensorgrid.sandbox.zygote", "--socket", str(path)]
    if owner:
        argv += ["--owner", str(owner)]
    if own_dir:
        argv.append("--remove-dir")
    for entry in allow:
        argv += ["--allow", entry]
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=env,
        cwd="/",
        close_fds=True,
        start_new_session=True,
    )


class _Choice:
    """Which zygote this process uses (decided when its first child starts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mode: str | None = None  # "off", "shared", "own"
        self._path: Path | None = None
        self._own: subprocess.Popen[bytes] | None = None
        self._own_dir: str | None = None
        self._starts = 0
        self._born = 0.0  # when the own zygote last started (monotonic)
        self._setting: str | None = None  # a daemon's --sandbox-zygote (None: the environment decides)
        self._warned = False
        self.allow: tuple[str, ...] = ()  # further entries an own zygote forks (tests' entries)

    def socket(self) -> str | None:
        """The zygote socket to ask, or None: exec this child."""
        with self._lock:
            if self._mode is None:
                self._decide()
            if self._mode == "off":
                return None
            if self._mode == "own":
                self._keep_own()
            return str(self._path) if self._path is not None else None

    def configure(self, value: str | None) -> None:
        """Decide by `value` (a daemon's --sandbox-zygote) rather than the environment."""
        self.reset()
        self._setting = value

    def _decide(self) -> None:
        value = (self._setting if self._setting is not None else os.environ.get(ZYGOTE_ENV, "")).strip()
        if value.lower() in OFF:
            self._mode = "off"
        elif value and value.lower() != "auto":
            self._mode, self._path = "shared", Path(value)
        else:
            self._mode = "own"

    def _keep_own(self) -> None:
        """Start this process's zygote, or a new one if it died."""
        if self._own is not None and self._own.poll() is None:
            return
        if self._starts >= MAX_OWN_STARTS:
            self._path = None
            self.warn_once(f"its zygote died {self._starts} times")
            return
        self._starts += 1
        if self._own_dir is None or not os.path.isdir(self._own_dir):  # a zygote that ended removed it
            self._own_dir = tempfile.mkdtemp(prefix="tg-zygote-")
        self._path = Path(self._own_dir) / "sock"
        try:
            self._own = start_zygote(self._path, allow=self.allow, owner=os.getpid(), own_dir=True)
            self._born = time.monotonic()
        except OSError as e:
            self._own, self._path = None, None
            self.warn_once(str(e))

    def await_own(self) -> bool:
        """Wait for this process's own zygote while it warms up (not past OWN_WARM_WAIT_S from
        its start); whether it answers. False at once in any other mode, or once it died."""
        with self._lock:
            own, path, born = self._own, self._path, self._born
        if self._mode != "own" or own is None or path is None:
            return False
        while own.poll() is None and time.monotonic() < born + OWN_WARM_WAIT_S:
            if wait_ready(str(path), 0.0):
                return True
            time.sleep(0.05)
        return False

    def warn_once(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("sandbox: children start by exec (torch imported by each): the zygote is unusable: %s", why)

    def reset(self) -> None:
        """Forget the decision (tests change the setting); stop this process's own zygote."""
        with self._lock:
            own, self._own = self._own, None
            own_dir, self._own_dir = self._own_dir, None
            self._mode, self._path, self._starts, self._warned = None, None, 0, False
        if own is not None and own.poll() is None:
            own.kill()  # no time to remove its directory itself: done here
            with contextlib.suppress(subprocess.TimeoutExpired):
                own.wait(5.0)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


_choice = _Choice()
started = {"forked": 0, "execd": 0}  # children this process started, by how (tests, benchmarks)


def reset() -> None:
    """Read TENSORGRID_SANDBOX_ZYGOTE again at the next child (stopping this process's own zygote)."""
    _choice.reset()


def configure(value: str | None) -> None:
    """How this process's children start from now on: a daemon's --sandbox-zygote (auto, off, or
    a shared zygote's socket), in place of TENSORGRID_SANDBOX_ZYGOTE (None: that variable again)."""
    _choice.configure(value)


def own_zygote() -> subprocess.Popen[bytes] | None:
    """This process's own zygote, if it started one (tests kill it)."""
    return _choice._own


def allow_in_own_zygote(entries: tuple[str, ...]) -> None:
    """Further entries this process's own zygote forks (the test suite's entry points)."""
    _choice.allow = tuple(entries)


def wait_ready(path: str, timeout_s: float) -> bool:
    """Whether a zygote answers at `path` within timeout_s (it binds its socket once warm)."""
    import socket

    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(path)
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
        time.sleep(0.05)


def _ask(config: dict[str, Any], env: dict[str, str]) -> tuple[Any, int, list[int]] | None:
    path = _choice.socket()
    if path is None:
        return None
    try:
        try:
            return request_child(path, config, env)
        except ZygoteUnavailable:
            if not _choice.await_own():  # own: still warming up? then this child waits for it
                raise
            return request_child(path, config, env)
    except ZygoteUnavailable as e:
        if _choice._mode == "shared":
            _choice.warn_once(str(e))
        return None  # own: died, or late (the next child restarts it)
    except ZygoteRefused as e:
        log.debug("the zygote refused %s: %s", config.get("entry"), e)
        return None


def popen(config: dict[str, Any], env: dict[str, str]) -> ForkedChild | subprocess.Popen[bytes]:
    """The child with pipes on its stdin, stdout and stderr, its scratch as cwd, in a session of
    its own and with no other descriptor of ours: forked by the zygote, else exec'd."""
    asked = _ask(config, env)
    if asked is not None:
        try:
            child = ForkedChild(*asked)
            started["forked"] += 1
            return child
        except ProcessLookupError:
            _discard(asked)
    started["execd"] += 1
    return subprocess.Popen(
        boot_argv(config),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=config["scratch"],
        env=env,
        close_fds=True,
        start_new_session=True,
    )


async def async_popen(config: dict[str, Any], env: dict[str, str]) -> AsyncForkedChild | asyncio.subprocess.Process:
    """popen for asyncio: the zygote's child, else asyncio's exec'd one."""
    asked = await asyncio.to_thread(_ask, config, env)
    if asked is not None:
        try:
            child = await AsyncForkedChild.start(*asked)
            started["forked"] += 1
            return child
        except ProcessLookupError:
            _discard(asked)
    started["execd"] += 1
    return await async_exec(boot_argv(config), config["scratch"], env)


async def async_exec(argv: list[str], cwd: str | Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """`argv` exec'd with pipes on its stdin, stdout and stderr, `cwd` as its directory, in a
    session of its own and with no other descriptor of ours."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        cwd=cwd,
        env=env,
    )


def _discard(asked: tuple[Any, int, list[int]]) -> None:
    """A child gone before its pidfd was opened (its zygote died at once): drop what we hold."""
    conn, _, fds = asked
    conn.close()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def kill_group(proc: Any) -> None:
    """SIGKILL a child's process group and the child (either kind), without signalling a
    recycled pid of a zygote's child."""
    if isinstance(proc, (ForkedChild, AsyncForkedChild)):
        proc.kill()
        return
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
