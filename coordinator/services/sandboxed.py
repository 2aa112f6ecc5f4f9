"""The coordinator's stranger-graph work, run in a sandboxed child (tensorgrid.sandbox).

The referee's re-execution of disputed rows, a training audit's replay, a training task run to
review claims that it cannot be, intake's row-independence probe, generation replay and
scoring, training intake's trial load of the programs and the end-of-round evaluation all run a
submitter's program on files a stranger sent. None runs in the coordinator's process, which
holds its signing key and its secrets: each runs in a child started by tensorgrid.sandbox with
the coordinator's referee limits (wall time per request, hard memory cap), a scrubbed
environment, no network, and read access to the files of the request at hand only (lent to it
for the call; where the OS allows): not the other blobs of the store. The child is kept warm
between requests (torch starts once) and replaced after any limit or crash. Requests and
answers are JSON; tensors stay in safetensors files.

A child that hits a limit raises SandboxFailure (`over_limit`): callers treat that as
"could not check", never as the node's fault.

The same work measured for memory, each request in a fresh child of its own, is
services.measured. This module is the coordinator's side: it builds the requests and reads the
answers, and imports no torch. The child's side is coordinator.services.sandbox_child (ENTRY).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.services.runtime import Runtime
from coordinator.services.training.cases import AuditCase, Finding
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import Isolation, SandboxFailure, WarmSandbox
from tensorgrid.sandbox.policy import OUTPUT_FILE
from tensorgrid.workloads.rowcontract import DEADLINE_S, Determinism

__all__ = [
    "ENTRY",
    "Part",
    "SandboxFailure",
    "determinism_of",
    "part_of",
    "generate_request",
    "infer_request",
    "probe_request",
    "evaluate_weights",
    "probe_rows",
    "reexecute_each",
    "reexecute_rows",
    "referee",
    "regenerate_rows",
    "replay_audit",
    "score_claim",
    "train_for_request",
    "train_task_part",
    "vet_training",
]

ENTRY = "coordinator.services.sandbox_child"
# the share of a referee request a reviewed training task's part steps for (train_task_part)
PART_SHARE = 0.5
PROBE_TIME_S = 2 * DEADLINE_S
OUTPUT = OUTPUT_FILE


def referee(rt: Runtime, blobs: BlobStore) -> WarmSandbox:
    """The coordinator's one warm sandboxed child: it reads the files each request names, lent
    to it for that request (WarmSandbox's `lend`), and nothing else of the machine: not the
    key, not the database, not the blobs of other jobs and submitters. Its process starts
    with the first request (intake's probe, a ruling, a serving check)."""

    def make() -> WarmSandbox:
        # Its scratch lives beside the store's tmp/ (same filesystem, so outputs move in
        # atomically and inputs are lent as hard links), not inside it: tmp/ holds only
        # uploads and work in progress.
        scratch = blobs.root / "sandbox"
        scratch.mkdir(exist_ok=True)
        return WarmSandbox(ENTRY, rt.sandbox, isolation=Isolation(), scratch_root=scratch, lend=True)

    return rt.referee_child(make)


def reexecute_rows(
    rt: Runtime,
    blobs: BlobStore,
    model: Path,
    source: Path,
    out: Path,
    batch_size: int,
    input_names: list[str] | None = None,
) -> None:
    """Run `model` over every row of `source` on CPU in the sandboxed child; write `out`.
    input_names: the job's argument order, as the nodes ran it (None: the file's order)."""
    request = infer_request(model, source, batch_size, input_names)
    referee(rt, blobs).call(request, outputs={OUTPUT: out}, inputs=(model, source))


def infer_request(model: Path, source: Path, batch_size: int, input_names: list[str] | None) -> dict[str, Any]:
    """The child's request to run `model` over every row of `source` (tensorgrid.sandbox's "infer")."""
    return {
        "op": "infer",
        "model": str(model),
        "source": str(source),
        "batch_size": int(batch_size),
        "input_names": list(input_names) if input_names else None,
    }


def reexecute_each(
    rt: Runtime,
    blobs: BlobStore,
    model: Path,
    source: Path,
    count: int,
    out: Path,
    input_names: list[str] | None = None,
) -> list[str | None]:
    """reexecute_rows(batch_size=0) of each of `count` requests in one call to the sandboxed
    child, each run alone: request i's tensors are those of `source` named "i/<name>", its
    outputs are named so in `out`. Per request: None, or why it failed (a failure of one is
    its own; a limit or a crash fails the call)."""
    request = {
        "op": "infer_each",
        "model": str(model),
        "source": str(source),
        "count": int(count),
        "input_names": list(input_names) if input_names else None,
    }
    answer = referee(rt, blobs).call(request, outputs={OUTPUT: out}, inputs=(model, source))
    return [None if e is None else str(e) for e in answer["errors"]]


def regenerate_rows(
    rt: Runtime, blobs: BlobStore, model: Path, source: Path, out: Path, decode: dict[str, Any]
) -> None:
    """The decoding loop (tensorgrid.workloads.generation) of `model` over the prompts of
    `source` with the job's decode settings, on CPU in the sandboxed child; write `out`."""
    referee(rt, blobs).call(generate_request(model, source, decode), outputs={OUTPUT: out}, inputs=(model, source))


def generate_request(model: Path, source: Path, decode: dict[str, Any]) -> dict[str, Any]:
    """The child's request to run the decoding loop of `model` over the prompts of `source`."""
    return {"op": "generate", "model": str(model), "source": str(source), "decode": dict(decode)}


def score_claim(
    rt: Runtime, blobs: BlobStore, model: Path, source: Path, claim: Path, out: Path, decode: dict[str, Any]
) -> list[bool]:
    """Teacher-forced scoring (tensorgrid.workloads.scoring) of `claim`, a generation output of
    the prompts of `source`, with the job's decode settings, on CPU in the sandboxed child; write
    the scored rows to `out`. Per prompt: whether the decoding loop would give the claim."""
    request = {"op": "score", "model": str(model), "source": str(source), "claim": str(claim), "decode": dict(decode)}
    answer = referee(rt, blobs).call(request, outputs={OUTPUT: out}, inputs=(model, source, claim))
    return [bool(x) for x in answer["consistent"]]


def probe_rows(
    rt: Runtime, blobs: BlobStore, model: Path, source: Path, input_names: list[str], batch_size: int
) -> Determinism:
    """The row-independence probe (tensorgrid.workloads.determinism) of `model` over the rows
    of `source`, in the sandboxed child; its verdict."""
    # The probe has its own time box (DEADLINE_S, checked between its runs); its wall limit is
    # that plus room for loading the program, whatever the operator set for the referee.
    request = probe_request(model, source, input_names, batch_size)
    return determinism_of(referee(rt, blobs).call(request, time_s=PROBE_TIME_S, inputs=(model, source)))


def probe_request(model: Path, source: Path, input_names: list[str], batch_size: int) -> dict[str, Any]:
    return {
        "op": "probe",
        "model": str(model),
        "source": str(source),
        "input_names": list(input_names),
        "batch_size": int(batch_size),
    }


def determinism_of(answer: dict[str, Any]) -> Determinism:
    """The probe's verdict from the child's answer to a probe request."""
    return Determinism(
        independent=bool(answer["independent"]),
        reason=str(answer.get("reason", "")),
        rows=int(answer.get("rows", 0)),
        finished=bool(answer.get("finished", True)),
        batch_s=float(answer.get("batch_s", 0.0)),
    )


def replay_audit(rt: Runtime, blobs: BlobStore, case: AuditCase) -> Finding:
    """check_reveal(case) in the sandboxed child; its Finding."""
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
    files = (case.program, case.shard, case.weights, case.result, *case.revealed.values())
    answer = referee(rt, blobs).call(request, inputs=files)
    return Finding(
        passed=bool(answer["passed"]),
        reason=str(answer.get("reason", "")),
        evidence=str(answer.get("evidence", "")),
        replay_seconds=float(answer.get("replay_seconds", 0.0)),
    )


@dataclass(frozen=True)
class Part:
    """Where a part of a reviewed training task stopped (train_task_part)."""

    step: int  # the inner steps done so far
    steps: int  # the task's
    done: bool  # the whole task ran: `out` holds its pseudo-gradient, not a state


def train_task_part(
    rt: Runtime,
    blobs: BlobStore,
    program: Path,
    weights: Path,
    shard: Path,
    settings: dict[str, Any],
    state: Path | None,
    out: Path,
) -> Part:
    """One part of a training task run as a node's worker runs it (tensorgrid.training.task:
    `settings` as leased, the round's global `weights`, the task's `shard`), on CPU in the
    sandboxed child, within one referee request: from
    `state` (the file the part before wrote; None: the start), inner steps until PART_SHARE of
    --referee-time-s has passed since the child took the request (loading included; read between
    steps: the rest is for the last step and the save); write the state reached, or the
    pseudo-gradient once done, to `out`."""
    request = train_for_request(rt, program, weights, shard, settings, state)
    files = [p for p in (program, weights, shard, state) if p is not None]
    answer = referee(rt, blobs).call(request, outputs={OUTPUT: out}, inputs=files)
    return part_of(answer)


def train_for_request(
    rt: Runtime, program: Path, weights: Path, shard: Path, settings: dict[str, Any], state: Path | None
) -> dict[str, Any]:
    """The child's request for one part of a training task (train_task_part's)."""
    return {
        "op": "train_for",
        "program": str(program),
        "weights": str(weights),
        "shard": str(shard),
        "settings": dict(settings),
        "state": str(state) if state is not None else None,
        "seconds": rt.sandbox.time_s * PART_SHARE if rt.sandbox.time_s > 0 else 60.0,
    }


def part_of(answer: dict[str, Any]) -> Part:
    """Where a part stopped, from the child's answer to a train_for request."""
    return Part(step=int(answer["step"]), steps=int(answer["steps"]), done=bool(answer["done"]))


def vet_training(
    rt: Runtime,
    blobs: BlobStore,
    program: Path,
    *,
    weights: Path | None = None,
    eval_program: Path | None = None,
    out: Path | None = None,
) -> frozenset[str]:
    """Load a training job's programs in the sandboxed child; the train program's parameter names.

    The train program must load with every parameter trainable; `weights` (the submitter's
    starting weights), else the program's own, must fit it and `eval_program`. With `out`
    (and no `weights`) the program's own weights are written there (round 0's weights).
    Intake waits on this, so it gets the probe's time box, not the referee's."""
    request = {
        "op": "vet_training",
        "program": str(program),
        "weights": str(weights) if weights is not None else None,
        "eval_program": str(eval_program) if eval_program is not None else None,
        "write_weights": out is not None and weights is None,
    }
    outputs = {OUTPUT: out} if out is not None and weights is None else None
    files = [p for p in (program, weights, eval_program) if p is not None]
    answer = referee(rt, blobs).call(request, outputs=outputs, time_s=PROBE_TIME_S, inputs=files)
    return frozenset(str(name) for name in answer["parameters"])


def evaluate_weights(
    rt: Runtime, blobs: BlobStore, program: Path, weights: Path, heldout: Path, loss: str
) -> dict[str, float | None]:
    """The held-out {"loss", "accuracy"} of `weights` under `program`
    (tensorgrid.training.outer.evaluate), on CPU in the sandboxed child."""
    request = {
        "op": "evaluate",
        "program": str(program),
        "weights": str(weights),
        "heldout": str(heldout),
        "loss": loss,
    }
    answer = referee(rt, blobs).call(request, inputs=(program, weights, heldout))
    return {key: None if answer.get(key) is None else float(answer[key]) for key in ("loss", "accuracy")}
