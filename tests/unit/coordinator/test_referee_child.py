"""The coordinator's sandboxed child (its referee) starts with the first request made of it, not
with the coordinator: most grids never run a stranger's graph, and each start costs an
interpreter and torch's import. It keeps programs warm: intake's probe loads the job's program
once, and the referee's re-executions of that job's rows find it loaded. Stopping the
coordinator kills it and starts no other."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.services import sandboxed
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.procs import REFEREE_ENTRY, running


def test_the_referee_starts_with_intakes_probe_keeps_its_program_warm_and_stops_with_the_coordinator(
    tmp_path: Path,
) -> None:
    app = Coordinator(
        CoordinatorConfig(
            data_dir=tmp_path / "coord", database_url=f"sqlite:///{tmp_path / 'c.db'}", referee_start="first-use"
        )
    )
    export_program(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), (torch.rand(2, 4),), tmp_path / "model.pt2")
    save_tensors({"x": torch.rand(6, 4)}, tmp_path / "rows.safetensors")
    model = app.blobs.path_for(app.blobs.put_file(tmp_path / "model.pt2").sha256)  # lent to the child from the store
    rows = app.blobs.path_for(app.blobs.put_file(tmp_path / "rows.safetensors").sha256)
    rt = app.runtime
    infer = {"op": "infer", "model": str(model), "source": str(rows), "batch_size": 3, "input_names": None}

    # another test's child alive in this worker is not this coordinator's (each test's own
    # teardown is checked by tests/conftest.py's leak guard)
    others = set(running(os.getpid(), REFEREE_ENTRY))

    def ours() -> set[int]:
        return set(running(os.getpid(), REFEREE_ENTRY)) - others

    async def main() -> list[dict[str, object]]:
        await app.start()
        await asyncio.sleep(1.5)  # past the referee loop's first look for rulings
        assert rt.referee is None and not ours()
        verdict = await asyncio.to_thread(sandboxed.probe_rows, rt, app.blobs, model, rows, [], 3)
        assert verdict.independent  # the first request waited for the child's start, and was answered
        assert len(ours()) == 1
        referee = rt.referee
        assert referee is not None and referee.limits == rt.sandbox  # the coordinator's limits (nice too)
        answers = [
            await asyncio.to_thread(
                referee.call, infer, {"out.safetensors": tmp_path / f"out{i}.safetensors"}, None, (model, rows)
            )
            for i in (0, 1)
        ]
        await app.stop()
        assert not ours()
        with pytest.raises(SandboxFailure, match="stopping"):  # nothing starts a child after stop
            sandboxed.probe_rows(rt, app.blobs, model, rows, [], 3)
        return answers

    answers = asyncio.run(main())
    assert [a["load_seconds"] for a in answers] == [0.0, 0.0]  # loaded once, by the probe
    outputs = [load_tensors(tmp_path / f"out{i}.safetensors")["output"] for i in (0, 1)]
    assert torch.equal(outputs[0], outputs[1]) and outputs[0].shape == (6, 3)
