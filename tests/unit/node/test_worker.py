"""node.worker's line protocol, spoken to a real child process, and its error mapping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from node.worker import classify
from tensorgrid.errors import ExecutionError, InvalidTensorFile, SpecError, UnsafeFileError
from tensorgrid.types import ErrorKind
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors

ROOT = Path(__file__).resolve().parents[3]


def run_worker(requests: list[Any], timeout: float) -> tuple[list[dict[str, Any]], str]:
    """Pipe requests (dicts, or raw lines as str) through a `node.worker` process; its replies
    and what it wrote to stderr."""
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    proc = subprocess.run(
        [sys.executable, "-m", "node.worker"], input=lines, capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_protocol_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"\x00payload\xff")
    requests = [
        {
            "id": "a",
            "kind": "noop",
            "model_path": None,
            "input_path": str(src),
            "output_path": str(tmp_path / "out.bin"),
            "settings": {},
            "device": "cpu",
            "threads": 1,
        },
        "not json at all",
        {"id": "b", "kind": "train", "input_path": str(src), "output_path": str(tmp_path / "x")},
        {
            "id": "c",
            "kind": "inference",
            "model_path": str(src),
            "input_path": str(src),
            "output_path": str(tmp_path / "y"),
            "settings": {},
            "device": "cpu",
            "threads": 1,
        },
    ]
    replies, stderr = run_worker(requests, timeout=60)
    assert replies[0]["ready"] is True
    noop, bad_line, bad_kind, bad_model = replies[1:]
    assert noop == {
        "id": "a",
        "ok": True,
        "rows": 0,
        "seconds": noop["seconds"],
        "load_seconds": 0.0,
        "cpu_seconds": noop["cpu_seconds"],
    }
    assert (tmp_path / "out.bin").read_bytes() == b"\x00payload\xff"
    assert bad_line["ok"] is False and bad_line["error_kind"] == "invalid_input"
    assert bad_kind == {"id": "b", "ok": False, "error_kind": "invalid_input", "message": bad_kind["message"]}
    assert bad_model["ok"] is False and bad_model["error_kind"] in ("unsafe_input", "invalid_input")
    assert "worker" in stderr  # logs go to stderr, never into the protocol stream


def test_a_program_is_loaded_once_and_stays_warm_across_tasks(tmp_path: Path) -> None:
    """Two tasks on one model, as two shards or two jobs of it would be: the second finds the
    program loaded (load_seconds 0) and answers the same rows the same way."""
    model = tmp_path / "model.pt2"
    export_program(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), (torch.rand(2, 4),), model)
    save_tensors({"x": torch.rand(5, 4)}, tmp_path / "in.safetensors")
    requests = [
        {
            "id": name,
            "kind": "inference",
            "model_path": str(model),
            "input_path": str(tmp_path / "in.safetensors"),
            "output_path": str(tmp_path / f"{name}.safetensors"),
            "settings": {"batch_size": 2},
            "device": "cpu",
            "threads": 1,
        }
        for name in ("first", "second")
    ]
    first, second = run_worker(requests, timeout=120)[0][1:]
    assert first["ok"] and second["ok"], (first, second)
    assert first["load_seconds"] > 0 and second["load_seconds"] == 0.0
    out = [load_tensors(tmp_path / f"{name}.safetensors")["output"] for name in ("first", "second")]
    assert torch.equal(out[0], out[1])


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (UnsafeFileError("pickle"), ErrorKind.UNSAFE_INPUT),
        (InvalidTensorFile("short"), ErrorKind.INVALID_INPUT),
        (SpecError("bad"), ErrorKind.INVALID_INPUT),
        (ExecutionError(ErrorKind.EXECUTION, "boom"), ErrorKind.EXECUTION),
        (ExecutionError(ErrorKind.PROGRAM_ERROR, "the model failed"), ErrorKind.PROGRAM_ERROR),
        (MemoryError(), ErrorKind.OUT_OF_MEMORY),
        (torch.OutOfMemoryError("CUDA out of memory"), ErrorKind.OUT_OF_MEMORY),
        (
            _chained(
                ExecutionError(ErrorKind.EXECUTION, "model failed"),
                RuntimeError("DefaultCPUAllocator: can't allocate memory"),
            ),
            ErrorKind.OUT_OF_MEMORY,
        ),
        (ZeroDivisionError(), ErrorKind.EXECUTION),
    ],
)
def test_classify(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind


class _LastRowLookup(torch.nn.Module):
    """Looks its rows' ids up in a table of 8: an id past it raises IndexError in the graph."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).sum(dim=1)


def test_a_program_that_raises_is_a_program_error_and_a_fault_of_the_node_is_not(tmp_path: Path) -> None:
    """The submitter's program raising on its last batch (an id past its embedding table) is
    reported as the program's error, a claim the referee can review; the worker failing on its
    own side (here the output cannot be written where the node asked) stays an execution error.
    On main both were execution errors, the node's failure."""
    model = tmp_path / "lookup.pt2"
    export_program(_LastRowLookup().eval(), (torch.zeros(2, 2, dtype=torch.long),), model)
    ids = torch.randint(0, 8, (6, 2))
    ids[-1, 0] = 12  # the last row's id is past the table
    save_tensors({"ids": ids}, tmp_path / "ids.safetensors")
    good = tmp_path / "good.safetensors"
    save_tensors({"ids": ids[:4]}, good)
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")

    def request(name: str, rows: Path, out: Path) -> dict[str, Any]:
        return {
            "id": name, "kind": "inference", "model_path": str(model), "input_path": str(rows),
            "output_path": str(out), "settings": {"batch_size": 2}, "device": "cpu", "threads": 1,
        }  # fmt: skip

    replies, _ = run_worker(
        [
            request("late", tmp_path / "ids.safetensors", tmp_path / "o.safetensors"),
            request("node", good, blocked / "o.safetensors"),  # its output's directory is a file
        ],
        timeout=120,
    )
    late, node = replies[1:]
    assert late["ok"] is False and late["error_kind"] == "program_error", late
    assert "IndexError" in late["message"], late
    assert node["ok"] is False and node["error_kind"] != "program_error", node


def test_an_allocation_past_the_task_memory_limit_is_reported_naming_the_limit() -> None:
    """The worker's address-space cap makes torch's allocation fail (OUT_OF_MEMORY, a claim the
    coordinator reviews); its message names the limit the task met, not only the allocator's words."""
    from node.worker import handle

    def hungry(request: dict[str, Any]) -> tuple[int, float]:
        raise MemoryError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes")

    reply = handle({"id": "t", "kind": "x", "memory_limit_bytes": 1 << 30, "device": "cpu"}, {"x": hungry})
    assert (reply["ok"], reply["error_kind"]) == (False, ErrorKind.OUT_OF_MEMORY.value), reply
    assert reply["message"].startswith("the task needs more than its memory limit of 1024 MiB ("), reply
    assert "can't allocate memory" in reply["message"], reply
    unlimited = handle({"id": "u", "kind": "x", "device": "cpu"}, {"x": hungry})
    assert unlimited["message"].startswith("MemoryError: "), unlimited  # no limit to name
