"""The parent's half of the sandbox: limits, the child's environment, its scratch directory
and its command line. Nothing here runs in the child."""

from __future__ import annotations

import json
import logging
import os
import shutil
import site
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tensorgrid.sandbox")

# The only variables a child sees from its parent: where programs are, the locale, which
# GPUs, how many threads and how idle threads wait (OMP_WAIT_POLICY=PASSIVE: they sleep rather
# than spin, which on busy cores burns CPU the other processes need; the test suite sets it).
# Never TENSORGRID_* (the keystore password, daemon settings), never HOME (its dotfiles),
# never credentials of any other tool.
ENV_ALLOWLIST = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)
STATUS_FILE = ".sandbox-status.json"
# The file a request that answers with tensors writes, in the child's scratch (the parent moves it out).
OUTPUT_FILE = "out.safetensors"
# The file a measured request may write its progress to, in the child's scratch (read while it runs:
# tensorgrid.sandbox.measured): a count, in ASCII digits, replaced whole each time.
PROGRESS_FILE = "progress"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_OPEN_FILES = 1024
_warned: set[str] = set()


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one child. 0 means "none" (memory_bytes, time_s, cuda_memory_bytes).

    memory_bytes caps the address space the program may map beyond what the child's own
    start-up (interpreter, torch) mapped; on CUDA the device's memory is capped instead,
    through torch.cuda.set_per_process_memory_fraction(cuda_memory_bytes / device memory).
    time_s is the wall time of one request, enforced by the parent.
    """

    memory_bytes: int = 0
    time_s: float = 0.0
    open_files: int = DEFAULT_OPEN_FILES
    cuda_memory_bytes: int = 0
    device: str = "cpu"  # "cuda": the address-space cap is left off (the driver maps far more than it uses)
    start_timeout_s: float = 120.0  # interpreter and torch import, not counted in time_s
    threads: int = 0  # torch's intra-op threads in a child that imports torch (0: torch's default)
    # How much lower than its parent's the child's CPU priority is (os.nice; 0: the same). Work
    # nobody waits on by the millisecond (a referee's re-runs) yields a shared CPU to work
    # somebody does (the coordinator answering serving calls).
    nice: int = 0


@dataclass(frozen=True)
class Isolation:
    """What of the machine the child keeps.

    network: "isolate" leaves the network namespace (a warning is logged once where the OS
    refuses); "shared" keeps it (only for tests of the sandbox itself).
    files: with confine_files, the child may read only the interpreter's and project's
    files, the system's libraries, its own /proc entry, `readable` and `writable`, and
    write only its scratch directory and `writable` (Landlock; a warning where missing).
    """

    network: str = "isolate"
    confine_files: bool = True
    readable: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()

    def with_paths(
        self, readable: Iterable[os.PathLike[str] | str] = (), writable: Iterable[os.PathLike[str] | str] = ()
    ) -> Isolation:
        return Isolation(
            self.network,
            self.confine_files,
            (*self.readable, *(os.path.abspath(p) for p in readable)),
            (*self.writable, *(os.path.abspath(p) for p in writable)),
        )


class Scratch:
    """A fresh private directory for one child: its cwd, HOME and TMPDIR; deleted on close."""

    def __init__(self, root: os.PathLike[str] | str | None = None, prefix: str = "sandbox-") -> None:
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scrubbed_env(
    scratch: Path, extra: Mapping[str, str] | None = None, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's whole environment: the allowlist from `source` (default os.environ) and the
    settings the sandbox itself needs; `extra` must not name a TENSORGRID_ variable."""
    source = os.environ if source is None else source
    env = {k: source[k] for k in ENV_ALLOWLIST if k in source}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        HOME=str(scratch),
        TMPDIR=str(scratch),
        PYTHONPATH=str(PROJECT_ROOT),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    for key, value in (extra or {}).items():
        if key.startswith("TENSORGRID_"):
            raise ValueError(f"{key} is a daemon setting and never reaches a sandboxed child")
        env[key] = value
    return env


def child_config(entry: str, limits: SandboxLimits, isolation: Isolation, scratch: Path) -> dict[str, Any]:
    """What tensorgrid.sandbox.boot runs: the entry and its settings (plain JSON: no secrets
    travel here). The same for an exec'd child (child_argv) and a zygote's fork (launch)."""
    if not all(part.isidentifier() for part in entry.split(".")):
        raise ValueError(f"{entry!r} is not a module name")
    return {
        "entry": entry,
        "limits": asdict(limits),
        "isolation": asdict(isolation),
        "scratch": str(scratch),
        "runtime": _runtime_paths(),
    }


def child_argv(
    entry: str, limits: SandboxLimits, isolation: Isolation, scratch: Path, python: str | None = None
) -> list[str]:
    """`python -m tensorgrid.sandbox.boot` with its settings (child_config)."""
    config = child_config(entry, limits, isolation, scratch)
    return [python or sys.executable, "-m", "tensorgrid.sandbox.boot", json.dumps(config)]


def _runtime_paths() -> list[str]:
    """What the interpreter needs to read: its prefixes, site-packages and the project."""
    paths = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        str(PROJECT_ROOT),
        os.path.dirname(os.path.realpath(sys.executable)),
    }
    # Not sys.path itself: its first entry may be a script's directory (e.g. /tmp).
    paths.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    paths.update(site.getsitepackages())
    return sorted(p for p in paths if p and os.path.isdir(p))


def report_status(scratch: Path) -> dict[str, str]:
    """Read what the child could isolate; log one warning per missing isolation and reason."""
    try:
        status = json.loads((scratch / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    for what in ("network", "files"):
        reason = status.get(f"{what}_reason")
        if status.get(what) == "shared" and reason and reason not in _warned:
            _warned.add(reason)
            log.warning(
                "sandbox: the child keeps the %s of this machine: %s",
                "network" if what == "network" else "file system",
                reason,
            )
    return {k: str(v) for k, v in status.items()}


__all__ = [
    "ENV_ALLOWLIST",
    "Isolation",
    "SandboxLimits",
    "Scratch",
    "child_argv",
    "child_config",
    "report_status",
    "scrubbed_env",
]
