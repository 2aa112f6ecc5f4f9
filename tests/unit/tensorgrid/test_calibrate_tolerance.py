"""The CUDA tolerance calibration (tensorgrid.tools.calibrate_tolerance) measured honestly on CPU:
its device runner is injectable, so the real path (export, the node's run_inference, the checks'
rows_match and deviation) runs against a CPU candidate: other thread counts and batch sizes (an
honest difference), or outputs perturbed by a known number of tolerances (a deviation the
current factor does or does not cover). Without a GPU the tool says so and exits 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorgrid.tools import calibrate_tolerance as tool
from tensorgrid.workloads.arrays import array_of
from tensorgrid.workloads.matching import deviation, rows_match
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tensorgrid.workloads.tolerance import CUDA_FACTOR, tolerance

ARCH = "embedding_bag"  # a float32 architecture quick to export


def f32(*values: float) -> dict[str, object]:
    return {"output": array_of(np.array(values, dtype=np.float32))}


def test_deviation_counts_cpu_tolerances_as_rows_match_does() -> None:
    atol, rtol = tolerance("F32")
    b = 2.0
    a = b + 5 * (atol + rtol * b)  # five CPU tolerances from the candidate's value
    units = deviation(f32(a), f32(b))  # type: ignore[arg-type]
    assert units == pytest.approx(5.0, rel=1e-3)
    assert not rows_match(f32(a), f32(b), "cpu") and rows_match(f32(a), f32(b), "cuda")  # type: ignore[arg-type]
    assert deviation(f32(1.0, 2.0), f32(1.0, 2.0)) == 0.0  # type: ignore[arg-type]
    assert deviation(f32(math.nan), f32(math.nan)) == math.inf  # a NaN never matches  # type: ignore[arg-type]
    ints = {"output": array_of(np.array([1, 2], dtype=np.int64))}
    assert deviation(ints, {"output": array_of(np.array([1, 3], dtype=np.int64))}) == math.inf
    assert deviation(f32(1.0), {"other": f32(1.0)["output"]}) == math.inf  # type: ignore[arg-type, dict-item]


def test_cpu_on_two_threads_at_other_batch_sizes_is_well_within_the_cpu_tolerance() -> None:
    reference, candidate = tool.device_runner("cpu", threads=1), tool.device_runner("cpu", threads=2)
    (finding,) = tool.calibrate(["bert"], reference, candidate, rows=16)
    assert finding.error == "" and finding.dtypes == ("F32",)
    assert 0.0 <= finding.units < 1.0 and finding.covered  # honest CPUs: below one CPU tolerance
    assert finding.max_abs < 1e-5


def perturbed(k: float) -> tool.Runner:
    """A CPU run whose first output element is then moved k CPU tolerances away."""
    honest = tool.device_runner("cpu", threads=1)

    def run(program: Path, inputs: Path, out: Path, batch_size: int, names: list[str]) -> None:
        honest(program, inputs, out, batch_size, names)
        outputs = load_tensors(out)
        flat = outputs["output"].reshape(-1)
        atol, rtol = tolerance("F32")
        x = float(flat[0])
        d = k * (atol + rtol * abs(x)) / (1 - k * rtol)  # |a - b| = k (atol + rtol |b|), b the moved value
        flat[0] = torch.tensor(x + math.copysign(d, x), dtype=torch.float64).to(flat.dtype)
        save_tensors(outputs, out)

    return run


def test_a_deviation_above_the_current_factor_is_reported_as_not_covered() -> None:
    k = 2 * CUDA_FACTOR
    reference = tool.device_runner("cpu", threads=1)
    (finding,) = tool.calibrate([ARCH], reference, perturbed(k), rows=16, batch_sizes=(0, 4))
    assert finding.units == pytest.approx(k, rel=0.01)
    assert not finding.covered  # rows_match with the device class "cuda" fails, as a check's would
    summary = tool.report([finding], "cuda")
    assert summary["covered"] is False and summary["current_factor"] == CUDA_FACTOR
    assert summary["factor_needed"] == pytest.approx(k, rel=0.01)
    assert summary["factor_with_margin"] == pytest.approx(tool.MARGIN * k, rel=0.01)
    assert summary["architectures"][ARCH]["covered"] is False
    text = "\n".join(tool.lines([finding], "cuda"))
    assert "NOT COVERED by 10×" in text and f"{ARCH}" in text


def test_a_deviation_between_the_cpu_and_cuda_bounds_is_covered_by_the_factor() -> None:
    (finding,) = tool.calibrate([ARCH], tool.device_runner("cpu", threads=1), perturbed(3.0), rows=16, batch_sizes=(0,))
    assert finding.units == pytest.approx(3.0, rel=0.01) and finding.covered
    assert tool.report([finding], "cuda")["factor_needed"] == pytest.approx(3.0, rel=0.01)


def test_a_program_that_fails_on_the_device_is_a_finding_not_a_crash() -> None:
    def broken(program: Path, inputs: Path, out: Path, batch_size: int, names: list[str]) -> None:
        raise RuntimeError("no kernel for this device")

    (finding,) = tool.calibrate([ARCH], tool.device_runner("cpu", threads=1), broken, rows=8, batch_sizes=(0,))
    assert not finding.covered and math.isinf(finding.units) and "no kernel" in finding.error
    assert tool.report([finding], "cuda")["factor_needed"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the tool calibrates instead")
def test_without_a_gpu_it_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert tool.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("no CUDA GPU on this machine") and "stays 10×" in out[0]
    last = json.loads(out[-1])
    assert last["gpu"] is False and last["calibrated"] is False


def test_unknown_architectures_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert tool.main(["--only", "bert,resnet9000"]) == 2
    assert "unknown architecture resnet9000" in capsys.readouterr().err
