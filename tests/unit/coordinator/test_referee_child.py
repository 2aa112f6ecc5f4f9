"""The coordinator's sandboxed child keeps programs warm: intake's probe loads the job's
program once, and the referee's re-executions of that job's rows find it loaded."""

from __future__ import annotations

from pathlib import Path

import torch

from coordinator.services.sandboxed import ENTRY
from tensorgrid.sandbox import Isolation, SandboxLimits, WarmSandbox
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors


def test_a_program_probed_at_intake_is_warm_for_the_rulings(tmp_path: Path) -> None:
    model = tmp_path / "model.pt2"
    export_program(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), (torch.rand(2, 4),), model)
    rows = tmp_path / "rows.safetensors"
    save_tensors({"x": torch.rand(6, 4)}, rows)
    child = WarmSandbox(
        ENTRY, SandboxLimits(memory_bytes=2 << 30, time_s=120.0, threads=1), isolation=Isolation(confine_files=False)
    )
    try:
        verdict = child.call(
            {"op": "probe", "model": str(model), "source": str(rows), "input_names": [], "batch_size": 3}
        )
        assert verdict["independent"] is True
        infer = {"op": "infer", "model": str(model), "source": str(rows), "batch_size": 3, "input_names": None}
        answers = [child.call(infer, outputs={"out.safetensors": tmp_path / f"out{i}.safetensors"}) for i in (0, 1)]
    finally:
        child.close()
    assert [a["load_seconds"] for a in answers] == [0.0, 0.0]  # loaded once, by the probe
    outputs = [load_tensors(tmp_path / f"out{i}.safetensors")["output"] for i in (0, 1)]
    assert torch.equal(outputs[0], outputs[1]) and outputs[0].shape == (6, 3)
