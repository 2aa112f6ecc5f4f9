"""Training end to end: SDK → coordinator → 4 node daemons, DiLoCo rounds on real digits.

The grid run must land within 1 accuracy point of the single-process baseline trained on
the same rows, and survive a node killed in the middle of a round.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import TrainingSpec
from tensorgrid.training.baseline import run_baseline
from tensorgrid.training.data import plan_split, write_rows
from tensorgrid.training.outer import evaluate, initial_weights
from tensorgrid.types import BlobRef, JobState
from tensorgrid.workloads.tensorfile import load_tensors
from tests.integration.conftest import TrainingDigits as Digits
from tests.integration.conftest import node_args

pytestmark = pytest.mark.integration
NODES = 4


def start(make_grid: Callable[..., LocalGrid]) -> LocalGrid:
    grid = make_grid()
    grid.start_coordinator()
    for i in range(NODES):
        grid.start_node(f"node{i}", *node_args(1))
    return grid


SHARED = pytest.mark.xdist_group("training")  # share one module grid per worker (see make_module_grid)


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Callable[..., LocalGrid]) -> LocalGrid:
    return start(make_module_grid)


@pytest.fixture
def grid(module_grid: LocalGrid) -> LocalGrid:
    """A coordinator and four nodes shared by the tests that each check only their own job."""
    module_grid.check_running()
    return module_grid


def baseline_accuracy(d: Digits, spec: TrainingSpec, tmp: Path) -> float:
    """The same rows in the same order, trained in one process with plain AdamW (DDP's result)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        heldout = tmp / "heldout.safetensors"
        write_rows(d.dataset, plan_split(spec, d.rows).heldout, heldout)
        initial_weights(d.train, tmp / "w0.safetensors")
        base = run_baseline(d.train, tmp / "w0.safetensors", d.dataset, spec)
        acc = evaluate(d.eval, base.weights, heldout, spec.loss)["accuracy"]
    finally:
        torch.set_num_threads(threads)
    assert acc is not None
    return acc


@SHARED
def test_digits_on_four_nodes_matches_the_baseline(grid: LocalGrid, digits_training: Digits, tmp_path: Path) -> None:
    d = digits_training
    # Every worker, every round: the reference. Eight rounds, not the default fifteen: the
    # defaults' accuracy is tests/unit/training/test_end_to_end.py's (the same protocol in one
    # process); here the real grid must match the baseline, and after eight rounds it lands as
    # close to it as after fifteen (0.9694 against 0.9777; 0.9749 against 0.9833), where each of
    # the seven rounds more cost the grid four audits and an evaluation.
    settings: dict[str, Any] = dict(quorum=1.0, device="cpu", seed=0, rounds=8)
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_training(d.train, d.dataset, eval_program=d.eval, **settings)
        metrics = list(client.watch_rounds(job.job_id))
        final = client.job(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        weights, program = client.training_result(job.job_id, tmp_path / "weights.safetensors", tmp_path / "eval.pt2")
    spec = TrainingSpec(train_program=BlobRef("0" * 64, 0), dataset=BlobRef("0" * 64, 0), **settings)
    assert [m["round"] for m in metrics] == list(range(spec.rounds))
    assert all(m["workers"] == NODES and m["bytes_up"] > 0 for m in metrics)
    grid_acc = metrics[-1]["accuracy"]
    heldout = tmp_path / "heldout.safetensors"
    write_rows(d.dataset, plan_split(spec, d.rows).heldout, heldout)
    assert evaluate(program, weights, heldout, spec.loss)["accuracy"] == pytest.approx(grid_acc)
    base = baseline_accuracy(d, spec, tmp_path)
    print(f"grid {grid_acc:.4f} baseline {base:.4f}")
    assert grid_acc >= base - 0.01 and grid_acc > 0.95


def wait_for_lease(db: Path, address: str, timeout: float = 20.0) -> None:
    """Until the node holds a lease (read from the coordinator's SQLite file, read-only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            (held,) = conn.execute(
                "SELECT count(*) FROM tasks WHERE state = 'leased' AND lower(node) = lower(?)", (address,)
            ).fetchone()
        if held:
            return
        time.sleep(0.02)
    raise AssertionError(f"node {address} never held a lease")


def test_a_node_killed_mid_round_does_not_stop_training(
    make_grid: Callable[..., LocalGrid], digits_training: Digits, tmp_path: Path
) -> None:
    d = digits_training
    grid = start(make_grid)
    victim = grid.procs[1]
    address = "0x" + json.loads((grid.root / "node0" / "key.json").read_text())["address"].removeprefix("0x")
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_training(d.train, d.dataset, eval_program=d.eval, rounds=6, device="cpu")
        for ev in client.watch(job.job_id):
            if ev.kind == "round":  # round 0 closed: round 1's tasks are being leased now
                break
        wait_for_lease(grid.root / "coordinator" / "coordinator.db", address)
        grid.kill_proc(victim)  # it holds a lease of the open round: a crash mid-task
        kinds = [ev.kind for ev in client.watch(job.job_id)]
        final = client.job(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        metrics = client.round_metrics(job.job_id)
    assert [m["round"] for m in metrics] == list(range(6))
    assert min(m["workers"] for m in metrics) >= 3  # quorum 0.75 of 4
    # The victim's task was either left out (the round closed on quorum) or reissued.
    assert any(m["workers"] == 3 for m in metrics) or "reissued" in kinds
    assert metrics[-1]["accuracy"] > 0.9
    assert kinds[-1] == "succeeded"


@SHARED
def test_cli_submit_training_watch_and_download(grid: LocalGrid, digits_training: Digits, tmp_path: Path) -> None:
    d = digits_training  # two of the grid's four nodes train this job
    out, program = tmp_path / "weights.safetensors", tmp_path / "eval.pt2"
    proc = subprocess.run(
        [
            sys.executable, "-m", "tensorgrid.cli", "job", "submit-training",
            "--coordinator", grid.target, "--key", str(tmp_path / "submitter.key"),
            "--program", str(d.train), "--eval-program", str(d.eval), "--dataset", str(d.dataset),
            "--rounds", "3", "--workers", "2", "--inner-steps", "10", "--device", "cpu",
            "--watch", "-o", str(out), "--program-output", str(program),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("round")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "accuracy" in lines[-1] and "succeeded" in proc.stdout
    assert set(load_tensors(out)) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert program.read_bytes() == d.eval.read_bytes()
