"""Calibrate the CUDA tolerance factor on a GPU (tensorgrid/workloads/tolerance.py: CUDA_FACTOR).

    python -m tensorgrid.tools.calibrate_tolerance            # on a machine with a CUDA GPU
    python -m tensorgrid.tools.calibrate_tolerance --device cpu   # CPU against CPU: the tool's own check

Runs the architecture matrix the real-model tests use (tensorgrid/testing/architectures.py: BERT,
GPT, ViT, CNN, LSTM, GRU, EmbeddingBag, float16 and bfloat16 MLPs), exported as their authors
would, through the node's own inference path (workloads.inference.run_inference): once on CPU
with one thread over all rows at once, as the coordinator's referee runs a check, and on the
device at several batch sizes, as nodes run shards. Each device run is compared with the CPU run
by the function every check uses (workloads.matching.rows_match, with the device class "cuda")
and measured in units of the CPU tolerance (workloads.matching.deviation: 1.0 is the CPU bound,
CUDA_FACTOR the CUDA one). Per architecture it prints the largest deviation and whether the
current factor covers it; the last line is one JSON object with the factor that would cover
every architecture and that factor with tolerance.py's margin of 10.

Without a CUDA GPU (torch.cuda.is_available() false) it says so and exits 0 with nothing
measured: the factor stays as tolerance.py derives it. `--device cpu` compares CPU runs on
--threads threads with the one-thread reference instead, which is how the tool is tested.

The device runs use the settings a node's worker boots with (tensorgrid/sandbox/boot.py):
deterministic algorithms, a fixed cuBLAS workspace, subnormals flushed on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorgrid.workloads.arrays import load_arrays
from tensorgrid.workloads.matching import deviation, rows_match
from tensorgrid.workloads.tolerance import CUDA_FACTOR

# (program, inputs file, output file, batch size (0: every row at once), input names): one run of
# the program over the inputs, its outputs written as a node writes them
Runner = Callable[[Path, Path, Path, int, list[str]], None]
MARGIN = 10.0  # tolerance.py: the factor is 10× the worst ratio found
ROWS = 64
BATCH_SIZES = (1, 7, 0)  # as tolerance.py's CPU figure was measured: single rows, odd batches, all rows


def device_runner(device: str, threads: int = 0) -> Runner:
    """Runs on `device` ("cpu", "cuda", "cuda:N") through run_inference, the node worker's path;
    threads: torch's CPU threads for the run (0: as they are)."""

    def run(program: Path, inputs: Path, out: Path, batch_size: int, names: list[str]) -> None:
        import torch

        from tensorgrid.workloads.inference import run_inference

        before = torch.get_num_threads()
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            run_inference(program, inputs, out, input_names=names, batch_size=batch_size, device=device)
        finally:
            torch.set_num_threads(before)

    return run


@dataclass(frozen=True)
class Finding:
    """How far one architecture's device runs lie from its CPU run."""

    architecture: str
    dtypes: tuple[str, ...]  # of its outputs
    units: float  # the largest deviation, in units of the CPU tolerance (inf: no factor covers it)
    batch_size: int  # of the device run where it was (0: every row at once)
    max_abs: float  # the largest absolute difference of any output element
    covered: bool  # every device run passes rows_match with the device class "cuda" (the current factor)
    error: str = ""  # a run that failed (the program would not run on the device)

    def as_json(self) -> dict[str, Any]:
        units = self.units if math.isfinite(self.units) else None
        return {
            "dtypes": list(self.dtypes),
            "units": units,
            "factor_needed": needed_factors(self.units)[0],
            "batch_size": self.batch_size,
            "max_abs": self.max_abs,
            "covered": self.covered,
            **({"error": self.error} if self.error else {}),
        }


def measure(
    name: str, root: Path, reference: Runner, candidate: Runner, rows: int, batch_sizes: Sequence[int]
) -> Finding:
    """Export architecture `name` into root, run it with `reference` over all rows at once and with
    `candidate` at each batch size, and compare as a check would."""
    import torch

    from tensorgrid.testing.architectures import ARCHITECTURES
    from tensorgrid.workloads.tensorfile import save_tensors

    arch = ARCHITECTURES[name]
    program, inputs_file = root / f"{name}.pt2", root / f"{name}-inputs.safetensors"
    arch.export(program)
    inputs = arch.inputs(rows, torch.Generator().manual_seed(7))
    save_tensors(inputs, inputs_file)
    names = list(inputs)  # the forward's order
    reference(program, inputs_file, root / f"{name}-reference.safetensors", 0, names)
    want = load_arrays(root / f"{name}-reference.safetensors")
    dtypes = tuple(sorted({a.dtype for a in want.values()}))
    worst, at, max_abs, covered = 0.0, batch_sizes[0], 0.0, True
    for size in batch_sizes:
        out = root / f"{name}-device-{size}.safetensors"
        try:
            candidate(program, inputs_file, out, size, names)
        except Exception as e:  # noqa: BLE001 - a program that does not run on the device is a finding
            return Finding(name, dtypes, math.inf, size, math.inf, False, f"{type(e).__name__}: {e}"[:300])
        got = load_arrays(out)
        units = deviation(want, got)
        covered = covered and rows_match(want, got, "cuda")
        max_abs = max(max_abs, _max_abs(want, got))
        if units > worst or (units == worst and math.isinf(units)):
            worst, at = units, size
    return Finding(name, dtypes, worst, at, max_abs, covered)


def _max_abs(want: dict[str, Any], got: dict[str, Any]) -> float:
    import numpy as np

    diffs = [
        float(np.abs(a.floats() - got[k].floats()).max())
        if a.is_float and a.shape == got[k].shape and a.data.size
        else 0.0
        for k, a in want.items()
        if k in got
    ]
    return max(diffs, default=0.0)


def calibrate(
    names: Sequence[str],
    reference: Runner,
    candidate: Runner,
    *,
    rows: int = ROWS,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> list[Finding]:
    """One Finding per architecture, in a scratch directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tg-calibrate-") as tmp:
        return [measure(name, Path(tmp), reference, candidate, rows, batch_sizes) for name in names]


def report(findings: Sequence[Finding], device: str, factor: float = CUDA_FACTOR) -> dict[str, Any]:
    """The JSON summary: per architecture its finding; over all, the factor that covers every one
    (the worst deviation) and that factor with tolerance.py's margin."""
    worst = max((f.units for f in findings), default=0.0)
    finite = math.isfinite(worst)
    needed, margin = needed_factors(worst)
    return {
        "tool": "calibrate_tolerance",
        "gpu": device.startswith("cuda"),
        "device": device,
        "current_factor": factor,
        "architectures": {f.architecture: f.as_json() for f in findings},
        "worst_units": worst if finite else None,
        "factor_needed": needed,
        "factor_with_margin": margin,
        "covered": all(f.covered for f in findings),
    }


def lines(findings: Sequence[Finding], device: str, factor: float = CUDA_FACTOR) -> list[str]:
    """What an operator reads: one line per architecture, then the verdict."""
    out = [f"{device} against CPU (1 thread, all rows at once); current factor {factor:g}× (tolerance.py)"]
    for f in findings:
        verdict = "covered" if f.covered else "NOT COVERED"
        if f.error:
            out.append(f"  {f.architecture:<14} {'/'.join(f.dtypes):<8} failed on {device}: {f.error}")
            continue
        units = "no factor covers it" if math.isinf(f.units) else f"{f.units:.4g}× the CPU tolerance"
        out.append(
            f"  {f.architecture:<14} {'/'.join(f.dtypes):<8} largest deviation {units} "
            f"(max |a-b| {f.max_abs:.3g}, batch {f.batch_size or 'all'}): {verdict} by {factor:g}×"
        )
    needed, margin = needed_factors(max((f.units for f in findings), default=0.0))
    if needed is None:
        out.append("no factor covers every architecture here: see the failed or non-finite ones above")
    else:
        out.append(
            f"a factor of {needed:.4g} covers every architecture here; with tolerance.py's margin of "
            f"{MARGIN:g}: {margin:.4g} (the factor in use: {factor:g}, CUDA_FACTOR in "
            "tensorgrid/workloads/tolerance.py)"
        )
    return out


def needed_factors(worst: float) -> tuple[float | None, float | None]:
    """(the factor that covers a worst deviation of `worst` CPU tolerances, that factor with
    tolerance.py's margin), never below 1 (a device class is never held tighter than CPU);
    (None, None) when no factor covers it."""
    if not math.isfinite(worst):
        return None, None
    return max(1.0, worst), max(1.0, MARGIN * worst)


def _grid_settings() -> None:
    """The settings a node's worker boots with (tensorgrid/sandbox/boot.py), before CUDA starts."""
    import torch

    from tensorgrid.sandbox.boot import CUBLAS_WORKSPACE

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_flush_denormal(True)


def build_parser() -> argparse.ArgumentParser:
    from tensorgrid.testing.architectures import ARCHITECTURES

    p = argparse.ArgumentParser(
        prog="python -m tensorgrid.tools.calibrate_tolerance", description=__doc__.split("\n")[0]
    )
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (CPU against CPU: the tool's own check)")
    p.add_argument("--threads", type=int, default=2, help="with --device cpu: the compared runs' torch threads")
    p.add_argument("--rows", type=int, default=ROWS, help="input rows per architecture")
    p.add_argument(
        "--only", default="", help=f"comma-separated architectures (default: all of {', '.join(ARCHITECTURES)})"
    )
    return p


def main(argv: list[str] | None = None, candidate: Runner | None = None) -> int:
    """candidate: the device runner (default: the node's inference path on --device)."""
    import torch

    from tensorgrid.testing.architectures import ARCHITECTURES

    ns = build_parser().parse_args(argv)
    names = [n for n in ns.only.split(",") if n] or list(ARCHITECTURES)
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        print(f"unknown architecture {', '.join(unknown)}; known: {', '.join(ARCHITECTURES)}", file=sys.stderr)
        return 2
    if ns.device.startswith("cuda") and candidate is None and not torch.cuda.is_available():
        message = (
            "no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing calibrated; "
            f"the factor stays {CUDA_FACTOR:g}× (CUDA_FACTOR in tensorgrid/workloads/tolerance.py, derived there "
            "from what CUDA changes). Run this on a machine with a GPU to measure it."
        )
        print(message)
        print(json.dumps({"tool": "calibrate_tolerance", "gpu": False, "calibrated": False, "message": message}))
        return 0
    _grid_settings()
    if candidate is None:
        candidate = device_runner(ns.device, ns.threads if ns.device == "cpu" else 0)
    findings = calibrate(names, device_runner("cpu", threads=1), candidate, rows=ns.rows)
    for line in lines(findings, ns.device):
        print(line)
    print(json.dumps({**report(findings, ns.device), "calibrated": True}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
