"""`python -m tensorgrid.sandbox.boot CONFIG`: confine this process, then run an entry point.

CONFIG is the JSON the parent built (tensorgrid.sandbox.policy.child_argv). In order:
leave the network (while still single-threaded, as unshare(CLONE_NEWUSER) requires), confine
the file system, cap core dumps and descriptors, import the entry module and run its optional
`prepare()` (the trusted imports: interpreter and torch), lower its CPU priority if asked
(SandboxLimits.nice: every thread's and its session's), have torch fill the memory programs
allocate unwritten and flush subnormal floats to zero, cap the address space at what is mapped
then plus the memory limit (soft = hard), cap CUDA memory, write what could be isolated to the
scratch directory's status file, and call the entry's `main()`.

That sequence is run(config): a child a zygote forked (tensorgrid.sandbox.zygote) goes through
the same function, its imports already made (so its import and prepare() are near free).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tensorgrid.sandbox import confine
from tensorgrid.sandbox.policy import STATUS_FILE

# Address space a program may map beyond its memory budget: allocator arenas, thread stacks
# and lazily mapped libraries are address space, not memory, and must not trip the cap.
ADDRESS_SPACE_HEADROOM = 512 * 1024**2
AUTOGROUP_TRIES = 3  # a session's autogroup nice: the kernel rate-limits changes to one per 100 ms
AUTOGROUP_RETRY_S = 0.11
CUBLAS_WORKSPACE = ":4096:8"  # what torch asks for deterministic cuBLAS (its docs: ":4096:8" or ":16:8")


def _isolate(config: dict[str, Any]) -> dict[str, str]:
    iso, scratch = config["isolation"], config["scratch"]
    status: dict[str, str] = {"network": "shared", "files": "shared"}
    if iso["network"] == "isolate":
        why = confine.leave_network()
        status["network"] = "isolated" if not why else "shared"
        if why:
            status["network_reason"] = why
    if iso["confine_files"]:
        read = [*confine.SYSTEM_READ, *config["runtime"], *iso["readable"]]
        write = [*confine.SYSTEM_WRITE, scratch, *iso["writable"]]
        why = confine.confine_files(read, write)
        status["files"] = "isolated" if not why else "shared"
        if why:
            status["files_reason"] = why
    return status


def _cap_memory(limits: dict[str, Any], status: dict[str, str]) -> None:
    memory = int(limits.get("memory_bytes") or 0)
    if memory > 0 and limits.get("device") != "cuda":
        cap = confine.cap_address_space(confine.mapped_bytes() + memory + ADDRESS_SPACE_HEADROOM)
        status["address_space_bytes"] = str(cap)
    cuda = int(limits.get("cuda_memory_bytes") or 0)
    torch = sys.modules.get("torch")
    if cuda > 0 and torch is not None and torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cuda / total), device)
        status["cuda_memory_bytes"] = str(cuda)


def _set_threads(threads: int) -> None:
    """torch's thread count, when the entry imported torch: a child sharing a busy machine
    with others does better on one thread than on several that wait for each other."""
    torch = sys.modules.get("torch")
    if threads > 0 and torch is not None:
        torch.set_num_threads(threads)


def _fill_uninitialized_memory(status: dict[str, str]) -> None:
    """Strangers' programs run one after another in a warm child (a node's worker, a serving
    replica, the referee). `empty`, `new_empty` and `resize_` are allowed operators: a program
    that returns such memory unwritten would read an earlier task's tensors, another
    submitter's data. In torch's deterministic mode that memory is filled (NaN, the integer
    maximum) when allocated; warn_only keeps an operator without a deterministic kernel
    running (it warns). Outputs of the other operators are unchanged (checked bit for bit on
    tensorgrid/testing/architectures.py's matrix). Entries that run programs import torch in prepare().
    On CUDA, deterministic cuBLAS needs a fixed workspace, read when CUDA starts (later, with
    the first task): without it every matrix product would warn."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    status["uninitialized_memory"] = "filled"


def _flush_subnormals(status: dict[str, str]) -> None:
    """Subnormal floats (float32 below 1.18e-38) read and computed as zero on CPU (x86's FTZ
    and DAZ, which torch.set_flush_denormal sets). Arithmetic on subnormals is up to 200x
    slower there (a float32 matrix product, 1 thread): weights or rows full of them would slow
    a node's task, and the referee's re-run of it past its time limit ("could not check"). A
    node and the referee both flush, so they compute the same; a local run that keeps
    subnormals differs from the grid's by less than the smallest normal float per value
    (1.2e-38 in float32, 2.2e-308 in float64). Threads torch starts later inherit the
    setting (the tests run the worker on 2); CUDA is unaffected."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    status["subnormals"] = "flushed" if torch.set_flush_denormal(True) else "kept"


def _lower_priority(nice: int) -> None:
    """Run at a lower CPU priority than the parent (SandboxLimits.nice): after the entry's
    trusted imports, before the program it runs. At the lowered priority, torch's import (about
    2 CPU-seconds) took the referee 57-76 s to start on a machine at load 8, and requests waited
    for it; its re-runs are what may wait, not its start. A thread's nice is its own on Linux and
    threads inherit it when started, so every thread there is now is lowered (torch may have
    started some), and those started later inherit it from the main thread."""
    if nice <= 0:
        return
    for tid in _threads():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    _lower_autogroup(nice)


def _threads() -> list[int]:
    """This process's thread ids (its main thread's alone where /proc cannot be listed)."""
    try:
        return sorted(int(tid) for tid in os.listdir(f"/proc/{os.getpid()}/task"))
    except OSError:
        return [os.getpid()]


def _lower_autogroup(nice: int) -> None:
    """The same for this session's autogroup. The child leads a session of its own, and where the
    kernel groups tasks by session (sched_autogroup_enabled, the default of most distributions)
    it shares the CPU with other sessions as a group: a task's own nice only ranks it among its
    group's tasks, so os.nice alone gives a busy child the same share as its parent's session
    (measured: the referee's re-runs slowed the coordinator's serving calls as if not lowered).
    Only in a session of our own: the group's nice is every member's. The kernel takes one such
    change per 100 ms from an unprivileged process (EAGAIN), hence the short retry."""
    path = Path("/proc/self/autogroup")
    if os.getsid(0) != os.getpid() or not path.exists():
        return
    for _ in range(AUTOGROUP_TRIES):
        try:
            path.write_text(str(nice))
            return
        except BlockingIOError:
            time.sleep(AUTOGROUP_RETRY_S)
        except OSError:
            return


def run(config: dict[str, Any]) -> None:
    """Confine this process as `config` says, then run its entry: the one sequence both an
    exec'd child (main) and a zygote's forked child (tensorgrid.sandbox.zygote) go through. In a
    fork the entry's imports are already done (the zygote made them), so its import and
    prepare() cost next to nothing; prepare() still runs here, in the child."""
    status = _isolate(config)
    confine.set_fixed_limits(int(config["limits"].get("open_files") or 0))
    entry = importlib.import_module(config["entry"])
    prepare = getattr(entry, "prepare", None)
    if prepare is not None:
        prepare()
    _lower_priority(int(config["limits"].get("nice") or 0))
    _fill_uninitialized_memory(status)
    _flush_subnormals(status)
    _set_threads(int(config["limits"].get("threads") or 0))
    _cap_memory(config["limits"], status)
    scratch = Path(config["scratch"])
    os.chdir(scratch)
    (scratch / STATUS_FILE).write_text(json.dumps(status))
    entry.main()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m tensorgrid.sandbox.boot CONFIG-JSON (started by tensorgrid.sandbox)")
    run(json.loads(args[0]))


if __name__ == "__main__":
    main()
