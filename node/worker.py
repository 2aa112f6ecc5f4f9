"""Child process that runs tasks for the executor: `python -m node.worker`.

Protocol: one JSON request per line on stdin, one JSON response per line on stdout.
On start the worker prints {"ready": true, "pid": n} once torch is imported, so the
executor can keep start-up time out of a task's time limit. EOF on stdin means exit.

Request:  {"id", "kind": "inference"|"generation"|"noop"|"training", "model_path", "input_path", "output_path",
           "settings": {...}, "device": "auto"|"cpu"|"cuda", "threads": int,
           "memory_limit_bytes": int (optional, 0 = none)}
           A training task's settings also name local files under "paths" (the agent fetched
           the blobs listed under "blobs"), e.g. {"weights": "…/lent-…/<sha256>"}; with
           "checkpoint_dir" its checkpoints are kept there (else in a temp dir, deleted at once).
           The daemon's executor lends the worker these files for the task alone and has it
           write its output and checkpoints in a directory of its own (node.lending): the paths
           it sends are those, never the blob cache's or the work directory's.
Response: {"id", "ok": true, "rows": n, "seconds": s, "load_seconds": s, "cpu_seconds": s,
           "commitment": hex (training only)}
           (cpu_seconds: the worker's CPU time for the task, its program's load left out)
       or {"id", "ok": false, "error_kind": <ErrorKind value>, "message": str}

The worker never imports a stranger's code: models are torch.export programs vetted by
tensorgrid.workloads, tensors are safetensors. It stays alive across requests so torch is
imported once and recently used programs stay loaded. The executor starts it through
tensorgrid.sandbox.boot, which confines it and calls prepare() (torch's import) before
capping its address space, then main().

node.light_worker is this worker without torch: it runs only LIGHT_KINDS (noop), and the
executor starts it for such a task when no worker runs (a node whose tasks never need torch
never imports it), replacing it with this one when a task that needs torch comes.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tensorgrid.errors import ExecutionError, InvalidTensorFile, SpecError, TensorGridError, UnsafeFileError
from tensorgrid.sandbox.boot import ADDRESS_SPACE_HEADROOM
from tensorgrid.sandbox.serve import is_oom, protocol_stream
from tensorgrid.types import ErrorKind
from tensorgrid.workloads.programs import ProgramCache, warm_imports

log = logging.getLogger("tensorgrid.node.worker")

MAX_MESSAGE_CHARS = 2000
LIGHT_KINDS = frozenset({"noop"})  # task kinds that need no torch: node.light_worker runs them


_cache: ProgramCache | None = None


def _install_program_cache() -> None:
    """Route run_inference's program loading through an LRU.

    run_inference takes a path and loads the program itself; patching the name it looks up
    in its own module (only in this child process) keeps warm programs without changing
    its signature.
    """
    from tensorgrid.workloads import inference

    global _cache
    _cache = ProgramCache(inference.load_program)
    inference.load_program = _cache  # type: ignore[assignment]


def _loaded_seconds() -> tuple[float, float]:
    """Wall and CPU seconds the program cache has spent loading programs so far."""
    return (_cache.load_seconds, _cache.load_cpu_seconds) if _cache is not None else (0.0, 0.0)


def _run_inference(request: dict[str, Any]) -> tuple[int, float]:
    from tensorgrid.workloads.inference import run_inference

    settings = request.get("settings") or {}
    if request.get("model_path") is None:
        raise SpecError("an inference task needs a model")
    stats = run_inference(
        request["model_path"],
        request["input_path"],
        request["output_path"],
        input_names=settings.get("input_names"),
        batch_size=int(settings.get("batch_size", 0)),
        device=request.get("device") or "auto",
    )
    return stats.rows, stats.seconds


def _run_generation(request: dict[str, Any]) -> tuple[int, float]:
    """The decoding loop over a shard of prompts (settings["generation"]: its DecodeSettings)."""
    from tensorgrid.workloads import inference
    from tensorgrid.workloads.generation import DecodeSettings, run_generation

    settings = request.get("settings") or {}
    if request.get("model_path") is None or not isinstance(settings.get("generation"), dict):
        raise SpecError("a generation task needs a model and its decoding settings")
    device = request.get("device") or "auto"
    module = inference.load_program(request["model_path"], inference.pick_device(device))  # the warm-program LRU
    decode = DecodeSettings.from_dict(settings["generation"])
    stats = run_generation(
        request["model_path"], request["input_path"], request["output_path"], decode, device=device, module=module
    )
    return stats.rows, stats.seconds


def _run_noop(request: dict[str, Any]) -> tuple[int, float]:
    """Copy the input to the output: measures the round trip without any torch work."""
    started = time.perf_counter()
    shutil.copyfile(request["input_path"], request["output_path"])
    return 0, time.perf_counter() - started


def _run_training(request: dict[str, Any]) -> tuple[int, float, str]:
    """One round of one worker: inner steps from the global weights on this node's shard.

    Writes the compressed pseudo-gradient; returns its final checkpoint-chain hash, which the
    node signs into its receipt as the commitment. The coordinator's referee runs the same
    function (tensorgrid.training.task) when two nodes claim a task cannot be run.
    """
    import tempfile

    from tensorgrid.training.task import run_task

    started = time.perf_counter()
    settings = request.get("settings") or {}
    weights = (settings.get("paths") or {}).get("weights")
    if request.get("model_path") is None or not weights:
        raise SpecError("a training task needs its train program and the round's global weights")
    program, shard, out = request["model_path"], request["input_path"], Path(request["output_path"])
    device = request.get("device") or "auto"
    keep = request.get("checkpoint_dir")
    if keep:  # the agent keeps them until the coordinator says which ones to reveal
        result = run_task(program, weights, shard, settings, out, device=device, checkpoint_dir=keep)
    else:
        with tempfile.TemporaryDirectory(prefix="ckpt-", dir=out.parent) as scratch:
            result = run_task(program, weights, shard, settings, out, device=device, checkpoint_dir=scratch)
    return result.rows, time.perf_counter() - started, result.final_commitment


Handlers = dict[str, Callable[[dict[str, Any]], tuple[int, float] | tuple[int, float, str]]]
_HANDLERS: Handlers = {
    "generation": _run_generation,
    "inference": _run_inference,
    "noop": _run_noop,
    "training": _run_training,
}


def classify(exc: BaseException) -> ErrorKind:
    """Map an exception raised while running a task to the ErrorKind reported to the coordinator."""
    if is_oom(exc):
        return ErrorKind.OUT_OF_MEMORY
    if isinstance(exc, ExecutionError):
        try:
            return ErrorKind(exc.kind)
        except ValueError:
            return ErrorKind.EXECUTION
    if isinstance(exc, UnsafeFileError):
        return ErrorKind.UNSAFE_INPUT
    if isinstance(exc, InvalidTensorFile | SpecError):
        return ErrorKind.INVALID_INPUT
    if isinstance(exc, TensorGridError | KeyError | TypeError | ValueError | FileNotFoundError):
        # A TensorGridError outside the ones above is a bad request (e.g. unknown device).
        return ErrorKind.INVALID_INPUT
    # The program's own raise arrives above as ExecutionError(PROGRAM_ERROR) (the workloads wrap
    # every call into its graph); anything else failed on the node's side: its own error.
    return ErrorKind.EXECUTION


def _set_address_space(limit_bytes: int) -> None:
    """Cap virtual memory for this task (the soft limit, below the sandbox's hard cap at what
    the node offers, so it can be lifted again afterwards up to that cap).

    This backstops the executor's RSS polling: a fast allocation fails inside the worker
    with a clean MemoryError instead of racing the poller or waking the kernel OOM killer.
    Skipped on CUDA, whose driver reserves far more address space than memory.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit_bytes <= 0:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        return
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft = mapped + limit_bytes + ADDRESS_SPACE_HEADROOM
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def handle(request: dict[str, Any], handlers: Handlers = _HANDLERS) -> dict[str, Any]:
    """Run one request and build its response; never raises for a task's own failure."""
    task_id = str(request.get("id", ""))
    limit = 0
    try:
        handler = handlers.get(request.get("kind", ""))
        if handler is None:
            raise SpecError(f"unknown task kind {request.get('kind')!r}; expected one of {sorted(handlers)}")
        threads = int(request.get("threads") or 0)
        torch = sys.modules.get("torch")  # prepare() imported it; a light worker has none (nor needs it)
        if threads > 0 and torch is not None:
            torch.set_num_threads(threads)
        limit = int(request.get("memory_limit_bytes") or 0)
        _set_address_space(limit if request.get("device") != "cuda" else 0)
        loaded, cpu = _loaded_seconds(), time.process_time()
        try:
            rows, seconds, *commitment = handler(request)
        finally:
            _set_address_space(0)
        now = _loaded_seconds()
        load_seconds, load_cpu = now[0] - loaded[0], now[1] - loaded[1]
        cpu_seconds = max(0.0, time.process_time() - cpu - load_cpu)
    except Exception as exc:  # a task's failure is reported, never fatal to the worker
        kind = classify(exc)
        message = f"{type(exc).__name__}: {exc}"
        if kind == ErrorKind.OUT_OF_MEMORY and limit > 0:  # its submitter reads why: the task's limit, met
            message = f"the task needs more than its memory limit of {limit / 2**20:.0f} MiB ({message})"
        message = message[:MAX_MESSAGE_CHARS]
        log.info("task %s failed (%s): %s", task_id, kind.value, message)
        return {"id": task_id, "ok": False, "error_kind": kind.value, "message": message}
    response: dict[str, Any] = {
        "id": task_id,
        "ok": True,
        "rows": rows,
        "seconds": seconds,
        "load_seconds": round(load_seconds, 6),
        "cpu_seconds": round(cpu_seconds, 6),
    }
    if commitment:
        response["commitment"] = commitment[0]
    return response


def serve(stdin: IO[str], out: IO[str], handlers: Handlers = _HANDLERS) -> None:
    """Answer requests from stdin until EOF."""
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as exc:
            response: dict[str, Any] = {
                "id": "",
                "ok": False,
                "error_kind": ErrorKind.INVALID_INPUT.value,
                "message": f"malformed request: {exc}"[:MAX_MESSAGE_CHARS],
            }
        else:
            response = handle(request, handlers)
        out.write(json.dumps(response) + "\n")
        out.flush()


def _volunteer_for_oom_killer() -> None:
    """Ask the kernel to kill this worker, not the daemon, if the machine runs out of memory."""
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass  # not Linux, or not permitted: the executor's own limits still apply


_prepared = False


def prepare() -> None:
    """Import torch and what loading a program needs, and route program loading through the
    LRU: before "ready", so the first task does not pay for it, and before the sandbox caps
    the address space."""
    global _prepared
    if not _prepared:
        import torch  # noqa: F401

        warm_imports()
        _install_program_cache()
        _prepared = True


def main() -> None:
    """Entry point of the child process."""
    run(light=False)


def run(*, light: bool) -> None:
    """Greet, then serve until EOF; light: without torch, LIGHT_KINDS only (node.light_worker)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="worker %(levelname)s %(message)s")
    _volunteer_for_oom_killer()
    out = protocol_stream()
    version = None
    if not light:
        prepare()
        import torch

        version = torch.__version__
    out.write(json.dumps({"ready": True, "pid": os.getpid(), "torch": version}) + "\n")
    out.flush()
    serve(sys.stdin, out, {k: v for k, v in _HANDLERS.items() if k in LIGHT_KINDS} if light else _HANDLERS)


if __name__ == "__main__":
    main()
