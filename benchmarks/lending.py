"""What lending a node's task worker each task's files costs (node.lending): the daemon's worker
(lend=True, no directory of the node's in its isolation) against one that reads the blob cache
and writes the work directory itself (how it ran before), in the same run, rounds alternating.

    python -m benchmarks.lending [--tasks 200] [--rounds 3]

Prints, per task kind (noop: the light worker's round trip; inference: a tiny program, warm),
the median and mean task time of each, their ratio, and the lending alone (links() + lend +
take_back of the task's files, as the executor does it for files it can link).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import torch

from node.executor import Executor, TaskRequest
from node.lending import TaskDesk
from tensorgrid.sandbox import Isolation
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors


def _blobs(cache: Path) -> dict[str, Path]:
    """A tiny program, its input and a 1 KiB noop input, under blob-like names."""
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    program, rows, raw = cache / ("a" * 64), cache / ("b" * 64), cache / ("c" * 64)
    export_program(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval(), (torch.randn(8, 4),), program)
    save_tensors({"x": torch.randn(10, 4)}, rows)
    raw.write_bytes(b"x" * 1024)
    return {"program": program, "rows": rows, "raw": raw}


def _request(kind: str, blobs: dict[str, Path], out: Path) -> TaskRequest:
    if kind == "noop":
        return TaskRequest("noop", None, str(blobs["raw"]), str(out), time_limit_s=60.0)
    return TaskRequest(
        "inference", str(blobs["program"]), str(blobs["rows"]), str(out), {"batch_size": 4}, "cpu", 1, 0, 60.0
    )


async def _times(ex: Executor, request: TaskRequest, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        outcome = await ex.run(request)
        times.append(time.perf_counter() - started)
        assert outcome.ok, outcome
        Path(request.output_path).unlink()  # as a node's slot does once the result is handed in
    return times


def _lending_alone(root: Path, request: TaskRequest, n: int) -> list[float]:
    desk = TaskDesk(root)
    reads = [p for p in (request.model_path, request.input_path) if p is not None]
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            assert desk.links(reads)  # as the executor does it then: on the loop
            lent, outs = desk.lend(reads, [request.output_path])
            desk.take_back(lent, outs, False)
            times.append(time.perf_counter() - started)
    finally:
        desk.close()
    return times


async def _kind(kind: str, root: Path, blobs: dict[str, Path], tasks: int, rounds: int) -> None:
    work = root / kind
    plain = Executor(
        isolation=Isolation().with_paths(readable=[blobs["raw"].parent], writable=[work]), scratch_root=work / "p"
    )
    lent = Executor(isolation=Isolation(), scratch_root=work / "l", lend=True)
    request = _request(kind, blobs, work / "task.out")
    got: dict[str, list[float]] = {"plain": [], "lent": []}
    try:
        for ex in (plain, lent):
            await _times(ex, request, 5)  # the worker started, the program loaded
        for r in range(rounds):
            for name, ex in (("plain", plain), ("lent", lent)) if r % 2 == 0 else (("lent", lent), ("plain", plain)):
                got[name] += await _times(ex, request, tasks)
        alone = _lending_alone(work / "l", request, tasks * rounds)
    finally:
        await plain.close()
        await lent.close()
    med = {k: statistics.median(v) * 1000 for k, v in got.items()}
    mean = {k: statistics.fmean(v) * 1000 for k, v in got.items()}
    print(
        f"{kind}: {len(got['lent'])} tasks each; median plain {med['plain']:.3f} ms, lent {med['lent']:.3f} ms "
        f"(x{med['lent'] / med['plain']:.3f}); mean plain {mean['plain']:.3f} ms, lent {mean['lent']:.3f} ms "
        f"(x{mean['lent'] / mean['plain']:.3f}); lending alone median {statistics.median(alone) * 1000:.3f} ms "
        f"({statistics.median(alone) * 1000 / med['lent'] * 100:.1f}% of a lent task)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks per worker per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-lending-") as tmp:
        root = Path(tmp)
        blobs = _blobs(root / "cache")
        for kind in ("noop", "inference"):
            asyncio.run(_kind(kind, root, blobs, args.tasks, args.rounds))


if __name__ == "__main__":
    main()
