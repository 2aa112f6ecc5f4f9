"""The coordinator's sandboxed child: the other side of coordinator.services.sandboxed.

It runs in a process started by tensorgrid.sandbox (limits, scrubbed environment, no network,
read access to the blob store only), never in the coordinator's: this is the only coordinator
module that loads a stranger's program or imports torch to run one. Requests and answers are
JSON (coordinator.services.sandboxed builds them); tensors stay in safetensors files.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from coordinator.services.training.cases import AuditCase
from coordinator.services.training.replay import check_reveal
from tensorgrid.sandbox import serve_once
from tensorgrid.sandbox.policy import OUTPUT_FILE as OUTPUT
from tensorgrid.sandbox.policy import PROGRESS_FILE as PROGRESS
from tensorgrid.sandbox.serve import Reported
from tensorgrid.training.inner import InnerSettings
from tensorgrid.training.objective import load_weights, open_program
from tensorgrid.training.outer import evaluate
from tensorgrid.training.task import run_first_step, run_task_for
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.determinism import probe
from tensorgrid.workloads.generation import DecodeSettings, run_generation
from tensorgrid.workloads.inference import infer_tensors, run_inference
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.programs import ProgramCache, warm_imports
from tensorgrid.workloads.scoring import score_generation

__all__ = ["main", "prepare"]

# Inference and generation programs stay loaded between requests: intake's probe loads the
# job's program, and the referee's rulings on that job's checks find it warm.
_programs = ProgramCache(load_program)


def _infer(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    loaded = _programs.load_seconds
    stats = run_inference(
        request["model"],
        request["source"],
        scratch / OUTPUT,
        input_names=request.get("input_names") or None,
        batch_size=int(request["batch_size"]),
        device="cpu",
        module=_programs(Path(request["model"]), torch.device("cpu")),
    )
    return {"rows": stats.rows, "seconds": stats.seconds, "load_seconds": _programs.load_seconds - loaded}


def _infer_each(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Several requests in one call, each run alone as "infer" runs it (all its rows in one
    forward pass): request i's tensors are those of `source` named "i/<name>", its answer's
    are named so in the output. One request's answer never depends on another's rows, and
    one that fails fails alone ("errors": None where it ran)."""
    module = _programs(Path(request["model"]), torch.device("cpu"))
    names = request.get("input_names") or None
    requests: list[dict[str, torch.Tensor]] = [{} for _ in range(int(request["count"]))]
    for key, tensor in tensorfile.load_tensors(Path(request["source"])).items():
        index, _, name = key.partition("/")
        requests[int(index)][name] = tensor
    answers: dict[str, torch.Tensor] = {}
    errors: list[str | None] = []
    for i, tensors in enumerate(requests):
        try:
            outputs = infer_tensors(module, tensors, input_names=names)
        except Exception as e:  # noqa: BLE001 - a failure inside a stranger's graph is this request's alone
            errors.append(f"{type(e).__name__}: {e}")
            continue
        answers.update({f"{i}/{name}": tensor for name, tensor in outputs.items()})
        errors.append(None)
    tensorfile.save_tensors(answers, scratch / OUTPUT)
    return {"errors": errors}


def _generate(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    settings = DecodeSettings.from_dict(request["decode"])
    module = _programs(Path(request["model"]), torch.device("cpu"))
    run_generation(request["model"], request["source"], scratch / OUTPUT, settings, device="cpu", module=module)
    return {}


def _score(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    settings = DecodeSettings.from_dict(request["decode"])
    module = _programs(Path(request["model"]), torch.device("cpu"))
    consistent = score_generation(
        request["model"], request["source"], request["claim"], scratch / OUTPUT, settings, device="cpu", module=module
    )
    return {"consistent": consistent}


def _probe(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    tensors = tensorfile.load_tensors(Path(request["source"]))
    names = list(request.get("input_names") or ()) or sorted(tensors)
    inputs = [tensors[name] for name in names]
    module = _programs(Path(request["model"]), torch.device("cpu"))
    verdict = probe(lambda batch: module(*batch), inputs, batch_size=int(request["batch_size"]))
    return dataclasses.asdict(verdict)


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


class _Steps:
    """The inner steps a train_for part has done (run_task_for's on_step), counted here for its
    error answer and, when `file` is given (a measured part), written there for the parent to read
    while the part runs: a part killed for its memory cannot answer (tensorgrid.sandbox.measured).
    The stranger's program runs in this process and could change either: the coordinator bounds
    what it reads by what it asked of the part (services.verification.review_parts.steps_done)."""

    def __init__(self, file: Path | None) -> None:
        self.done: int | None = None  # None: the part failed before it stood at its first step
        self.file = file

    def __call__(self, step: int) -> None:
        self.done = step
        if self.file is not None:
            new = self.file.with_name(self.file.name + ".new")
            new.write_text(str(step))
            os.replace(new, self.file)  # whole: the parent never reads half a count


def _train_for(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """One part of a training task (a review of a task longer than one request): from the state
    file of the part before, about request["seconds"] of its inner steps, at most
    request["most_steps"] of them when it names any (a measured part: services.measured). A part
    that fails says the inner steps it did before (the error answer's "step"), and with
    request["progress"] writes them to PROGRESS as it goes (_Steps)."""
    steps_done = _Steps(scratch / PROGRESS if request.get("progress") else None)
    try:
        step, steps, done = run_task_for(
            request["program"],
            request["weights"],
            request["shard"],
            request["settings"],
            scratch / OUTPUT,
            seconds=float(request["seconds"]),
            device="cpu",
            state=request.get("state") or None,
            most_steps=int(request.get("most_steps") or 0),
            on_step=steps_done,
        )
    except Exception as e:
        counted = steps_done.done
        if type(counted) is not int:  # never stood at a step (or a program changed the count)
            raise
        raise Reported(e, {"step": counted}) from e
    return {"step": step, "steps": steps, "done": done}


def _train_step(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Intake's measured run of a training job: its first task's first inner step."""
    run_first_step(request["program"], request["weights"], request["shard"], request["settings"], device="cpu")
    return {}


def _vet_training(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    cpu = torch.device("cpu")
    module = open_program(request["program"], cpu)
    if request.get("weights"):
        weights = tensorfile.load_tensors(Path(request["weights"]))
        load_weights(module, weights)
    else:
        weights = dict(module.state_dict())
        if request.get("write_weights"):
            tensorfile.save_tensors(weights, scratch / OUTPUT)
    if request.get("eval_program"):
        load_weights(load_program(Path(request["eval_program"]), cpu, purpose="training"), weights)
    return {"parameters": sorted(name for name, _ in module.named_parameters())}


def _evaluate(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    return evaluate(request["program"], request["weights"], request["heldout"], str(request["loss"]))


_OPS = {
    "infer": _infer,
    "infer_each": _infer_each,
    "replay": _replay,
    "train_for": _train_for,
    "train_step": _train_step,
    "probe": _probe,
    "generate": _generate,
    "score": _score,
    "vet_training": _vet_training,
    "evaluate": _evaluate,
}


def _handle(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    op = _OPS.get(str(request.get("op")))
    if op is None:
        raise ValueError(f"unknown operation {request.get('op')!r}")
    return op(request, scratch)


def prepare() -> None:
    """Before "ready" (and the address-space cap): what loading a program imports, so intake's
    probe and the first ruling do not wait for it."""
    warm_imports()


def main() -> None:
    serve_once(_handle)
