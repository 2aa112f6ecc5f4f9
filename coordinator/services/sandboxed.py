"""The coordinator's stranger-graph work, run in a sandboxed child (tensorgrid.sandbox).

The referee's re-execution of disputed rows and a training audit's replay both run a
submitter's program on files a node sent. Neither runs in the coordinator's process, which
holds its signing key and its secrets: each runs in a child started by
tensorgrid.sandbox.run_once with the coordinator's referee limits (wall time, hard memory
cap), a scrubbed environment, no network, and read access to the request's own files only
(where the OS allows). Requests and answers are JSON; tensors stay in safetensors files.

A child that hits a limit raises SandboxFailure (`over_limit`): callers treat that as
"could not check", never as the node's fault.

This module is also the child's entry point: its `main()` runs in the child.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from coordinator.services.training.replay import AuditCase, Finding, check_reveal
from tensorgrid.sandbox import Isolation, SandboxFailure, SandboxLimits, run_once, serve_once
from tensorgrid.training.inner import InnerSettings
from tensorgrid.workloads.inference import run_inference

__all__ = ["ENTRY", "SandboxFailure", "reexecute_rows", "replay_audit"]

ENTRY = "coordinator.services.sandboxed"
OUTPUT = "out.safetensors"


def reexecute_rows(
    limits: SandboxLimits, scratch_root: Path, model: Path, source: Path, out: Path, batch_size: int
) -> None:
    """Run `model` over every row of `source` on CPU in a sandboxed child; write `out`."""
    request = {"op": "infer", "model": str(model), "source": str(source), "batch_size": int(batch_size)}
    isolation = Isolation().with_paths(readable=[model, source])
    run_once(ENTRY, request, limits, isolation=isolation, scratch_root=scratch_root, outputs={OUTPUT: out})


def replay_audit(limits: SandboxLimits, scratch_root: Path, case: AuditCase) -> Finding:
    """check_reveal(case) in a sandboxed child; its Finding."""
    files = [case.program, case.shard, case.weights, case.result, *case.revealed.values()]
    request = {
        "op": "replay",
        "program": str(case.program),
        "shard": str(case.shard),
        "weights": str(case.weights),
        "result": str(case.result),
        "settings": case.settings.to_dict(),
        "commitment": case.commitment,
        "segment": int(case.segment),
        "revealed": {str(step): str(path) for step, path in case.revealed.items()},
    }
    isolation = Isolation().with_paths(readable=files)
    answer = run_once(ENTRY, request, limits, isolation=isolation, scratch_root=scratch_root)
    return Finding(
        passed=bool(answer["passed"]),
        reason=str(answer.get("reason", "")),
        evidence=str(answer.get("evidence", "")),
        replay_seconds=float(answer.get("replay_seconds", 0.0)),
    )


# -- in the child -----------------------------------------------------------------------------


def _infer(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    stats = run_inference(
        request["model"], request["source"], scratch / OUTPUT, batch_size=int(request["batch_size"]), device="cpu"
    )
    return {"rows": stats.rows}


def _replay(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    case = AuditCase(
        program=Path(request["program"]),
        shard=Path(request["shard"]),
        weights=Path(request["weights"]),
        result=Path(request["result"]),
        settings=InnerSettings.from_dict(request["settings"]),
        commitment=str(request["commitment"]),
        segment=int(request["segment"]),
        revealed={int(step): Path(path) for step, path in request["revealed"].items()},
    )
    return dataclasses.asdict(check_reveal(case))


def _handle(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    op = request.get("op")
    if op == "infer":
        return _infer(request, scratch)
    if op == "replay":
        return _replay(request, scratch)
    raise ValueError(f"unknown operation {op!r}")


def main() -> None:
    serve_once(_handle)
