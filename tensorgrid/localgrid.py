"""Start a coordinator and nodes as real processes on 127.0.0.1 (demo, tests, benchmarks).

The shared core never imports the daemons: it runs their console entry points as
subprocesses, so what runs here is exactly what an operator runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorgrid.client import Client
from tensorgrid.crypto import Signer, save_keystore
from tensorgrid.errors import TensorGridError
from tensorgrid.localca import TlsFiles

PASSWORD = "local-grid-password"
COORDINATOR = "coordinator"  # the coordinator's process name; every other process is a node
# The processes of a local grid take their settings from the flags given here, never from
# variables exported in the caller's shell (`tensorgrid devnet up` prints some to export).
_SETTING_VARS = (
    "TENSORGRID_COORDINATOR",
    "TENSORGRID_NODE_",
    "TENSORGRID_CHAIN_RPC",
    "TENSORGRID_DEPLOYMENT",
    "TENSORGRID_DATABASE_URL",
    "TENSORGRID_CA_CERT",
    "TENSORGRID_INSECURE",
    "TENSORGRID_OWNER",
)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] | None = None  # what it was given beyond our environment (restart gives it again)
    prefix: tuple[str, ...] = ()  # what runs the command (`ip netns exec NAME`): the first words of its args

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _terminate(procs: list[Proc], timeout: float) -> None:
    """SIGTERM the running ones together, then wait for each; SIGKILL any still running at the deadline."""
    running = [p for p in procs if p.alive()]
    for proc in running:
        proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()


@dataclass
class LocalGrid:
    """Processes started by this object, stopped by stop() (SIGTERM, then SIGKILL). Unless
    `detached`, its coordinators and nodes also end when the process that started them does
    (`--owner`, tensorgrid.owner), however it ended: a killed test run leaves none behind."""

    root: Path
    coordinator_args: list[str] = field(default_factory=list)
    node_args: list[str] = field(default_factory=list)  # given to every node start_node starts
    procs: list[Proc] = field(default_factory=list)
    port: int = 0
    # TLS: the coordinator serves these files and nodes verify against their CA; None: plain text
    tls: TlsFiles | None = None
    # where the coordinator listens and clients dial (a multi-host test: its namespace's address)
    host: str = "127.0.0.1"
    detached: bool = False  # its processes outlive this one (a devnet's `up`): stopped by pid

    replica_targets: list[str] = field(default_factory=list)  # HOST:PORT of coordinators start_replica started

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def targets(self) -> str:
        """Every coordinator of this grid, first the one start_coordinator started (what nodes dial)."""
        return ",".join([self.target, *self.replica_targets])

    @property
    def ca_cert(self) -> Path | None:
        """What a client of this grid passes as ca_cert (None on a plain-text grid)."""
        return self.tls.ca_cert if self.tls is not None else None

    def client(self, signer: Signer | None = None, **kwargs: Any) -> Client:
        """An SDK client of this grid, over TLS when the grid serves it."""
        return Client(self.targets, signer, ca_cert=self.ca_cert, **kwargs)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> Proc:
        """prefix: a command that runs the rest (`ip netns exec NAME` puts the process on another
        host of a multi-host test); restart() runs the process again with it."""
        log_path = self.root / f"{name}.log"
        log = open(log_path, "ab")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_VARS)}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        popen = subprocess.Popen(
            [*prefix, *args], stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        log.close()
        proc = Proc(name, popen, log_path, env, tuple(prefix))
        self.procs.append(proc)
        return proc

    def _owner_args(self) -> tuple[str, ...]:
        return () if self.detached else ("--owner", str(os.getpid()))

    def start_coordinator(
        self,
        *extra: str,
        database_url: str = "",
        port: int = 0,
        timeout: float = 60,
        prefix: Sequence[str] = (),
        wait: bool = True,
    ) -> Proc:
        """wait=False: return at once (e.g. to start replicas beside it); await_coordinator() then."""
        self.root.mkdir(parents=True, exist_ok=True)
        ready = self.root / "coordinator.port"
        ready.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "coordinator.main",
            "run",
            "--listen",
            f"{self.host}:{port}",
            "--data-dir",
            str(self.root / "coordinator"),
            "--ready-file",
            str(ready),
            "--drain-s",  # a local grid has no load balancer to tell
            "0",
            *self._owner_args(),
            *(self.tls.coordinator_args if self.tls is not None else ()),
            *self.coordinator_args,
            *extra,
        ]
        if database_url:
            args += ["--database-url", database_url]
        proc = self._spawn(COORDINATOR, args, prefix=prefix)
        if wait:
            self.await_coordinator(timeout)
        return proc

    def await_coordinator(self, timeout: float = 60) -> None:
        """Until the coordinator start_coordinator started serves (its port is then `port`)."""
        self.port = self._await_ready(self.coordinator(), self.root / "coordinator.port", timeout)

    def coordinator(self) -> Proc:
        """The coordinator process started last (one killed earlier may still be in `procs`)."""
        return next(p for p in reversed(self.procs) if p.name == COORDINATOR)

    def start_replica(
        self,
        database_url: str,
        *extra: str,
        host: str = "",
        port: int = 0,
        prefix: Sequence[str] = (),
        timeout: float = 60,
    ) -> Proc:
        """Another coordinator process on the same PostgreSQL database and the same data directory
        (shared blob store and key), with the first's flags, listening on host:port (default: the
        grid's host, a free port; kept across a restart) and run by `prefix` (another namespace's
        `ip netns exec`). Nodes started afterwards dial all of them (`targets`)."""
        proc = self.coordinator()
        number = len(self.replica_targets) + 2
        ready = self.root / f"{COORDINATOR}-{number}.port"
        ready.unlink(missing_ok=True)
        args = _command(proc)
        host = host or self.host
        args[args.index("--listen") + 1] = f"{host}:{port or free_port()}"
        args[args.index("--ready-file") + 1] = str(ready)
        if "--database-url" not in args:
            args += ["--database-url", database_url]
        replica = self._spawn(f"{COORDINATOR}-{number}", [*args, *extra], proc.env, prefix)
        self.replica_targets.append(f"{host}:{self._await_ready(replica, ready, timeout)}")
        return replica

    @staticmethod
    def _await_ready(proc: Proc, ready: Path, timeout: float) -> int:
        """The port a starting coordinator writes to its ready file, once it does."""
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if not proc.alive():
                raise TensorGridError(f"{proc.name} exited at start:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise TensorGridError(f"{proc.name} not ready after {timeout}s:\n{proc.log_tail()}")
            time.sleep(0.05)
        return int(ready.read_text())

    def restart(self, proc: Proc, timeout: float = 60) -> Proc:
        """Start a stopped or crashed process again with its own command line (and prefix), in
        its place; a coordinator or replica comes back on the port it had (its nodes dial that
        one), and is ready when this returns."""
        if proc.alive():
            raise TensorGridError(f"{proc.name} is still running")
        args = _command(proc)
        self.procs.remove(proc)
        if not proc.name.startswith(COORDINATOR):
            return self._spawn(proc.name, args, proc.env, proc.prefix)
        if proc.name == COORDINATOR:
            args[args.index("--listen") + 1] = f"{self.host}:{self.port}"
        ready = Path(args[args.index("--ready-file") + 1])
        ready.unlink(missing_ok=True)
        restarted = self._spawn(proc.name, args, proc.env, proc.prefix)
        self._await_ready(restarted, ready, timeout)
        return restarted

    def create_node_key(self, name: str, private_key: str | None = None) -> Path:
        """A keystore for node `name`: a fresh key, or `private_key` imported (devnets).

        Written here with the same call `tensorgrid-node init --light-kdf` makes, not by running
        it: a process start and eth-account's import per node cost a second of CPU each, and
        every test grid, demo and devnet starts nodes (the command itself has its own tests)."""
        keystore = self.root / name / "key.json"
        if not keystore.exists():
            signer = Signer.from_hex(private_key) if private_key is not None else Signer.generate()
            save_keystore(signer, keystore, PASSWORD, light=True)
        return keystore

    def start_node(
        self,
        name: str,
        *extra: str,
        env: dict[str, str] | None = None,
        private_key: str | None = None,
        prefix: Sequence[str] = (),
        coordinator: str = "",
    ) -> Proc:
        """coordinator: the address the node dials, when not the grid's target (a proxy on its path)."""
        keystore = self.create_node_key(name, private_key)
        args = [
            sys.executable,
            "-m",
            "node.main",
            "--keystore",
            str(keystore),
            "run",
            "--coordinator",
            coordinator or self.targets,
            "--data-dir",
            str(self.root / name),
            *self._owner_args(),
            *(self.tls.client_args if self.tls is not None else ()),
            *self.node_args,
            *extra,
        ]
        return self._spawn(name, args, {"TENSORGRID_KEY_PASSWORD": PASSWORD, **(env or {})}, prefix)

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        """Until `count` nodes have registered with the coordinator (each warms its task
        worker first, which on a loaded machine takes a while)."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while len(client.nodes()) < count:
                self.check_running()
                if time.monotonic() > deadline:
                    raise TensorGridError(f"{count} nodes not registered after {timeout}s")
                time.sleep(0.1)

    def stop_proc(self, proc: Proc, timeout: float = 15) -> int:
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        return proc.popen.returncode

    def kill_proc(self, proc: Proc) -> None:
        """SIGKILL the process and its children (its task worker), as a crash would."""
        if proc.alive():
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()

    def check_running(self) -> None:
        """Raise, with its log's tail, if any process this grid started has exited."""
        for proc in self.procs:
            if not proc.alive():
                raise TensorGridError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the nodes all at once and wait for them, then the coordinator (a draining
        node's last heartbeat goes to it); SIGKILL whatever still runs after `timeout` s."""
        coordinators = [p for p in self.procs if p.name.startswith(COORDINATOR)]
        _terminate([p for p in self.procs if not p.name.startswith(COORDINATOR)], timeout)
        _terminate(coordinators, timeout)
        for proc in self.procs:
            try:  # reap a task worker left behind in the node's process group
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.clear()

    def __enter__(self) -> LocalGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _command(proc: Proc) -> list[str]:
    """The process's command line without the prefix that ran it."""
    return [str(a) for a in proc.popen.args][len(proc.prefix) :]  # type: ignore[union-attr]
