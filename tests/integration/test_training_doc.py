"""docs/TRAINING.md works as written: its script makes the character-level language-model job
(tokens dataset, train- and eval-mode programs), and its first command trains it on a 2-node grid."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tensorgrid.localgrid import LocalGrid
from tensorgrid.workloads.tensorfile import load_tensors
from tests.integration.conftest import node_args

pytestmark = pytest.mark.integration
DOC = Path(__file__).resolve().parents[2] / "docs" / "TRAINING.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_documented_language_model_trains_on_the_grid(make_grid: Callable[..., LocalGrid], tmp_path: Path) -> None:
    script = next(b for b in blocks("python") if "class CharLM" in b)
    (tmp_path / "make_job.py").write_text(script)
    made = subprocess.run([sys.executable, "make_job.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    tokens = load_tensors(tmp_path / "chars.safetensors")["tokens"]
    assert tokens.shape[1] == 65 and tokens.shape[0] == 400_000 // 65

    command = shlex.split(blocks("bash")[0].replace("\\\n", " "))
    assert command[:3] == ["tensorgrid", "job", "submit-training"]
    grid = make_grid()
    grid.start_coordinator()
    for i in range(2):
        grid.start_node(f"node{i}", *node_args(1))
    ran = subprocess.run(
        [sys.executable, "-m", "tensorgrid.cli", *command[1:], "--coordinator", grid.target,
         "--key", str(tmp_path / "submitter.key"), "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rounds = [line for line in ran.stdout.splitlines() if line.startswith("round")]
    assert [line.split()[1] for line in rounds] == ["1/4", "2/4", "3/4", "4/4"]
    losses = [float(line.split()[4]) for line in rounds]
    assert losses[-1] < losses[0] < 4.5  # below uniform guessing (ln of a ~80-character vocabulary)
    assert "audits" in ran.stdout and "succeeded" in ran.stdout
    assert "tok.weight" in load_tensors(tmp_path / "weights.safetensors")
