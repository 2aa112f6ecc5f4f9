"""The referee's side of a sampled endpoint check: one request run again by the coordinator,
in its sandboxed child (services.sandboxed), never in its own process; and comparing answers.

Blocking (files and a child process): callers run these on the runtime's work threads.
A request's bytes are written to a temporary file under the blob store (the only place the
child may read), run with the endpoint's settings on CPU, and the answer read back.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import reexecute_each, reexecute_rows, regenerate_rows
from coordinator.services.serving.hooks import ServedRequest
from coordinator.services.verification.compare import Rows, rows_match
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import TensorGridError
from tensorgrid.serving import arrays_from_bytes, arrays_to_bytes, batch_digest
from tensorgrid.spec import EndpointSpec
from tensorgrid.workloads.arrays import array_of, concat_arrays, load_arrays, save_arrays

Tensors = Rows  # numpy arrays (tensorgrid.workloads.arrays): the coordinator does not import torch


def parse(data: bytes) -> Tensors | None:
    """The tensors of an answer, or None when they are not valid safetensors."""
    try:
        return arrays_from_bytes(data, name="answer")
    except (TensorGridError, ValueError):
        return None


def answered_tokens(output: bytes) -> list[int] | None:
    """The tokens a one-prompt generation answer holds (tokens[0, :lengths[0]]), None when the
    answer is not such a file."""
    tensors = parse(output)
    if tensors is None or "tokens" not in tensors or "lengths" not in tensors:
        return None
    if tensors["tokens"].is_float or tensors["lengths"].is_float:
        return None
    tokens, lengths = tensors["tokens"].data, tensors["lengths"].data
    if tokens.ndim != 2 or tokens.shape[0] != 1 or lengths.shape != (1,) or not 0 <= int(lengths[0]) <= tokens.shape[1]:
        return None
    return [int(t) for t in tokens[0, : int(lengths[0])]]


def stream_fault(output: bytes, streamed: list[int], given: list[int]) -> str | None:
    """Whose fault it is that a generation answer does not hold the tokens its caller was sent:
    "replica" when it does not hold those its own replica streamed (no receipt covers a stream:
    the replica lied to the caller), "gone" when only a replica tried before it streamed other
    tokens (it is gone: no one to blame), None when the answer holds what was sent."""
    answered = answered_tokens(output)
    if answered != streamed:
        return "replica"
    return None if answered == given else "gone"


def answers_match(reference: Tensors, candidate: bytes, device_class: str) -> bool:
    """The batch checks' comparison (compare.rows_match): ints and tokens exact, floats within
    the tolerance of the device class ("cuda" when either side ran on CUDA)."""
    mine = parse(candidate)
    return mine is not None and rows_match(reference, mine, device_class)


def run_request(rt: Runtime, blobs: BlobStore, spec: EndpointSpec, request: ServedRequest) -> Tensors:
    """The endpoint's model on one request's input, on CPU in the sandboxed child."""
    with tempfile.TemporaryDirectory(prefix="serve-check-", dir=blobs.tmp_dir) as tmp:
        source, out = Path(tmp) / "in.safetensors", Path(tmp) / "out.safetensors"
        model = blobs.path_for(spec.model.sha256)
        if spec.serves == "generation":
            save_arrays(_prompt(request.input), source)
            regenerate_rows(rt, blobs, model, source, out, spec.decode_settings(request.seed))
        else:
            source.write_bytes(request.input)
            reexecute_rows(rt, blobs, model, source, out, 0, list(spec.input_names) or None)
        return load_arrays(out)


def run_requests(
    rt: Runtime, blobs: BlobStore, spec: EndpointSpec, requests: Sequence[ServedRequest]
) -> list[Tensors | str]:
    """run_request of each of an inference endpoint's `requests`, in one call to the sandboxed
    child (each request still runs alone there, all its rows in one forward pass: its answer is
    run_request's). Per request its answer, or why it could not run; a limit or a crash of the
    child raises for all."""
    assert spec.serves == "inference", "generation requests are re-run one at a time (run_request)"
    answers: list[Tensors | str] = [{} for _ in requests]
    joined: Tensors = {}
    for i, request in enumerate(requests):
        try:
            tensors = arrays_from_bytes(request.input)
        except (TensorGridError, ValueError) as e:  # as the child's read of a lone request's file
            answers[i] = f"{type(e).__name__}: {e}"
            continue
        joined.update({f"{i}/{name}": value for name, value in tensors.items()})
    if not joined:
        return answers
    with tempfile.TemporaryDirectory(prefix="serve-check-", dir=blobs.tmp_dir) as tmp:
        source, out = Path(tmp) / "in.safetensors", Path(tmp) / "out.safetensors"
        save_arrays(joined, source)
        model = blobs.path_for(spec.model.sha256)
        errors = reexecute_each(rt, blobs, model, source, len(requests), out, list(spec.input_names) or None)
        if len(errors) != len(requests):
            raise TensorGridError(f"the referee answered {len(errors)} of {len(requests)} requests")
        for i, error in enumerate(errors):
            if error is not None and not isinstance(answers[i], str):
                answers[i] = error
        for key, value in load_arrays(out).items():
            index, _, name = key.partition("/")
            answer = answers[int(index)]
            if isinstance(answer, str):
                raise TensorGridError(f"the referee answered request {index}, which it said failed")
            answer[name] = value
    return answers


def run_in_batch(
    rt: Runtime, blobs: BlobStore, spec: EndpointSpec, requests: Sequence[ServedRequest], index: int
) -> Tensors | None:
    """Request `index`'s rows when run in one forward pass with its batch-mates, as a replica
    joins them (same tensor names, dtypes and trailing shapes, in order); None when it ran alone."""
    names = list(spec.input_names) or None
    mine = arrays_from_bytes(requests[index].input)
    key = _key(mine, names)
    group: list[Tensors] = []
    start = 0
    for i, r in enumerate(requests):
        if not r.ok:
            continue
        tensors = arrays_from_bytes(r.input) if i != index else mine
        if _key(tensors, names) != key:
            continue
        if i == index:
            start = sum(next(iter(t.values())).shape[0] for t in group)
        group.append(tensors)
    if len(group) < 2:
        return None
    joined = {name: concat_arrays([t[name] for t in group]) for name in mine}
    rows = next(iter(mine.values())).shape[0]
    with tempfile.TemporaryDirectory(prefix="serve-check-", dir=blobs.tmp_dir) as tmp:
        source, out = Path(tmp) / "in.safetensors", Path(tmp) / "out.safetensors"
        source.write_bytes(arrays_to_bytes(joined))
        reexecute_rows(rt, blobs, blobs.path_for(spec.model.sha256), source, out, 0, names)
        return {k: v[start : start + rows] for k, v in load_arrays(out).items()}


def _key(tensors: Tensors, names: list[str] | None) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    order = names if names is not None else sorted(tensors)
    return tuple((n, tensors[n].dtype, tuple(tensors[n].shape[1:])) for n in order if n in tensors)


def _prompt(data: bytes) -> Tensors:
    """A generation request as a one-prompt file, as the replica reads it (node.serving.compute):
    a bare [T] prompt becomes [1, T] with its length; its index is 0 (the request's seed decides)."""
    tensors = arrays_from_bytes(data, name="prompt")
    tokens = tensors["tokens"]
    if tokens.ndim == 1:
        tokens = tokens[None, :]
        tensors.setdefault("lengths", array_of(np.array([tokens.shape[1]], dtype=np.int64)))
    return {"tokens": tokens, "lengths": tensors["lengths"]}


def corrected_digest(requests: Sequence[ServedRequest], index: int, answer: Tensors) -> str:
    """The batch's output digest with the referee's answer in place of request `index`'s:
    the correct output hash a slash names (it differs from the signed one by that answer)."""
    outputs = [r.output for r in requests]
    outputs[index] = arrays_to_bytes(answer)
    return batch_digest(outputs)
