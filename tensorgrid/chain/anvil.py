"""A throwaway local chain: start anvil on a free 127.0.0.1 port, stop it afterwards.

Used by the chain tests, the settlement benchmark and the devnet. anvil picks the port
itself (`--port 0`) so there is no race between choosing a port and binding it; we read
the port from its log and its funded dev keys from `--config-out`.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tensorgrid.chain.artifacts import CONTRACTS_DIR
from tensorgrid.chain.errors import ChainError

ANVIL_IN_NODE_MODULES = CONTRACTS_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
_LISTENING_RE = re.compile(r"Listening on 127\.0\.0\.1:(\d+)")
_PR_SET_PDEATHSIG = 1


# Started through this small launcher on Linux: it asks the kernel to SIGTERM it when the
# starting process dies (so a crashed test run or benchmark never leaves anvil behind), starts
# anvil as its child (SIGKILLed by the kernel should the launcher end first), passes SIGTERM on,
# and once anvil has ended removes anvil's temporary directory (argv[1]): a killed starter's
# atexit never runs, and would leave it. A preexec_fn would ask the kernel in the forked child,
# but running Python there runs gRPC's fork handlers too, which abort the child when the parent
# has live gRPC channels; the launcher has none.
_LAUNCH = f"""
import ctypes, os, shutil, signal, sys
prctl = ctypes.CDLL(None).prctl
prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM)
launcher = os.getpid()
pid = os.fork()
if pid == 0:
    prctl({_PR_SET_PDEATHSIG}, signal.SIGKILL)
    if os.getppid() != launcher:  # it ended before we asked
        os._exit(1)
    os.execv(sys.argv[2], sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
status = os.waitpid(pid, 0)[1]
shutil.rmtree(sys.argv[1], ignore_errors=True)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def anvil_binary() -> Path:
    """$TENSORGRID_ANVIL, else the npm-installed binary under contracts/, else `anvil` on PATH."""
    override = os.environ.get("TENSORGRID_ANVIL")
    if override:
        return Path(override)
    if ANVIL_IN_NODE_MODULES.is_file():
        return ANVIL_IN_NODE_MODULES
    found = shutil.which("anvil")
    if found is None:
        raise ChainError("anvil not found; run deploy/bootstrap.sh (npm ci in contracts/) or set TENSORGRID_ANVIL")
    return Path(found)


@dataclass
class Anvil:
    """A running anvil. `keys[i]` (0x-hex private key) funds `addresses[i]`."""

    process: subprocess.Popen[bytes]
    rpc_url: str
    chain_id: int
    keys: list[str]
    addresses: list[str]
    workdir: Path
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def rpc(self, method: str, params: list[object] | None = None) -> object:
        """One raw JSON-RPC call (for anvil's own methods, e.g. evm_increaseTime)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
        request = urllib.request.Request(self.rpc_url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            reply = json.loads(response.read())
        if "error" in reply:
            raise ChainError(f"anvil {method} failed: {reply['error']}")
        return reply.get("result")

    def advance_time(self, seconds: int) -> None:
        """Move the chain clock forward and mine a block at the new time."""
        self.rpc("evm_increaseTime", [int(seconds)])
        self.rpc("evm_mine")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate anvil (kill it if it lingers) and remove its temporary files."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Anvil:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_anvil(
    *,
    accounts: int = 10,
    balance_eth: int = 10_000,
    chain_id: int = 31337,
    timeout: float = 30.0,
    extra_args: tuple[str, ...] = (),
    detached_in: Path | None = None,
) -> Anvil:
    """Start anvil on 127.0.0.1 and return once its RPC answers; ChainError after `timeout` s.

    anvil is stopped by `stop()`, at interpreter exit, and (on Linux) when the thread that
    started it dies: start it from the main thread or one that outlives its use.
    With `detached_in`, anvil keeps its files in that directory and outlives this process
    (the devnet): whoever started it stops it by its pid.
    """
    tmp = None if detached_in is not None else tempfile.TemporaryDirectory(prefix="tg-anvil-")
    workdir = detached_in if detached_in is not None else Path(tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "anvil.json"
    log_path = workdir / "anvil.log"
    for stale in (config, log_path):  # a detached devnet reuses its directory
        stale.unlink(missing_ok=True)
    args = [
        str(anvil_binary()),
        "--host", "127.0.0.1",
        "--port", "0",
        "--accounts", str(accounts),
        "--balance", str(balance_eth),
        "--chain-id", str(chain_id),
        "--config-out", str(config),
        *extra_args,
    ]  # fmt: skip
    if sys.platform == "linux" and detached_in is None:
        args = [sys.executable, "-S", "-c", _LAUNCH, str(workdir), *args]
    # anvil logs every request to stdout: a file, not a pipe nobody drains.
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detached_in is not None,
        )
    try:
        port = _wait_for_port(process, log_path, timeout)
        keys = _wait_for_keys(config, timeout)
        node = Anvil(process, f"http://127.0.0.1:{port}", chain_id, keys, [], workdir, tmp)
        _wait_for_rpc(node, timeout)
    except BaseException:
        process.kill()
        process.wait()
        if tmp is not None:
            tmp.cleanup()
        raise
    from tensorgrid.crypto import Signer

    node.addresses = [Signer.from_hex(k).address for k in keys]
    if detached_in is None:
        atexit.register(node.stop)  # also on an uncaught exception; stop() is idempotent
    return node


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING_RE.search(log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            raise ChainError(f"anvil exited with {process.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)
    raise ChainError(f"anvil did not start listening within {timeout} s")


def _wait_for_keys(config: Path, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            keys = json.loads(config.read_text())["private_keys"]
            return [str(k) for k in keys]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            time.sleep(0.02)
    raise ChainError(f"anvil did not write its accounts to {config} within {timeout} s")


def _wait_for_rpc(node: Anvil, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            node.rpc("eth_blockNumber")
            return
        except (OSError, ChainError):
            if time.monotonic() > deadline:
                raise ChainError(f"anvil at {node.rpc_url} did not answer within {timeout} s") from None
            time.sleep(0.02)
