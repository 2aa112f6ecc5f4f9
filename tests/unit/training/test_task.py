"""A training task run from what its lease says (tensorgrid.training.task): what a node's worker
runs, and the coordinator's referee when it reviews claims that a task cannot be run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tensorgrid.blobs import file_sha256
from tensorgrid.errors import SpecError
from tensorgrid.training import inner
from tensorgrid.training.inner import checkpoint_name, read_result, run_inner
from tensorgrid.training.task import run_task, run_task_for
from tests.unit.training import test_inner
from tests.unit.training.conftest import Digits
from tests.unit.training.test_inner import SETTINGS

shards = test_inner.files  # the fixture: (round weights, a shard of digits)


def leased(shard: Path, seed: int = 5) -> dict[str, Any]:
    """Round settings as the coordinator leases them: one seed per shard of the round."""
    return {
        "inner": SETTINGS.to_dict(),
        "seeds": {file_sha256(shard).sha256: seed, "00" * 32: 9},
        "compression": "fp16",
    }


def test_a_task_runs_with_its_shards_seed_and_the_rounds_compression_writing_no_checkpoints(
    digits: Digits, shards: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights, shard = shards
    written: list[str] = []
    save = inner.save_tensors

    def saving(tensors: dict[str, torch.Tensor], path: Path) -> None:
        written.append(path.name)
        save(tensors, path)

    monkeypatch.setattr(inner, "save_tensors", saving)
    out = tmp_path / "result.safetensors"
    result = run_task(digits.train_program, weights, shard, leased(shard), out, device="cpu")
    expected = run_inner(digits.train_program, weights, shard, replace(SETTINGS, seed=5, compression="fp16"))
    assert result.final_commitment == expected.final_commitment
    assert written == []  # no checkpoint on the referee's disk
    kept = tmp_path / "kept"
    run_task(digits.train_program, weights, shard, leased(shard), out, device="cpu", checkpoint_dir=kept)
    assert written == [checkpoint_name(0), checkpoint_name(3), checkpoint_name(6)]  # a node keeps them for reveals
    assert all((kept / name).exists() for name in written)


def test_a_task_run_in_parts_from_saved_states_is_the_run_a_node_makes(
    digits: Digits, shards: tuple[Path, Path], tmp_path: Path
) -> None:
    """The referee's review of a long task: one step a part (seconds=0), each part from the
    state file the part before wrote, in a fresh process's stead (nothing kept in memory)."""
    weights, shard = shards
    whole = tmp_path / "whole.safetensors"
    run_task(digits.train_program, weights, shard, leased(shard), whole, device="cpu")
    state: Path | None = None
    reached = []
    for part in range(SETTINGS.steps):
        out = tmp_path / f"part-{part}.safetensors"
        step, steps, done = run_task_for(
            digits.train_program, weights, shard, leased(shard), out, seconds=0, device="cpu", state=state
        )
        reached.append(step)
        assert steps == SETTINGS.steps and done == (step == steps)
        state = out
    assert reached == list(range(1, SETTINGS.steps + 1))  # at least one step a part, never more at 0 s
    got, expected = read_result(state), read_result(whole)
    assert got.final_commitment == expected.final_commitment  # every checkpoint digest, and the upload
    assert got.losses == expected.losses and got.tensors.keys() == expected.tensors.keys()
    assert all(torch.equal(got.tensors[k], expected.tensors[k]) for k in expected.tensors)
    # a part long enough for the whole task finishes it in one
    step, _, done = run_task_for(digits.train_program, weights, shard, leased(shard), whole, seconds=60, device="cpu")
    assert (step, done) == (SETTINGS.steps, True) and read_result(whole).final_commitment == expected.final_commitment


def test_measured_parts_step_at_most_as_asked_and_drop_the_state_they_restored(
    digits: Digits, shards: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The referee's measured parts of a memory review (1, 1, 2, 4, ... steps: most_steps, whatever
    their time) make the run a node makes; a resumed part clears the state it read once restored,
    so it holds what a node's run holds at that step, not that state's copy besides (before: the
    state stayed referenced for the whole part, up to a model and two moments more)."""
    weights, shard = shards
    whole = tmp_path / "whole.safetensors"
    run_task(digits.train_program, weights, shard, leased(shard), whole, device="cpu")
    cleared: list[int] = []
    run_inner_for = inner.run_inner_for

    def watching(*args: Any, state: dict[str, torch.Tensor] | None = None, **kw: Any) -> inner.Partial:
        part = run_inner_for(*args, state=state, **kw)
        if state is not None:
            cleared.append(len(state))  # what the caller's dict holds after the part: nothing
        return part

    monkeypatch.setattr("tensorgrid.training.task.run_inner_for", watching)
    state: Path | None = None
    reached = []
    while True:
        out = tmp_path / f"part-{len(reached)}.safetensors"
        most = max(1, reached[-1] if reached else 0)
        step, steps, done = run_task_for(
            digits.train_program, weights, shard, leased(shard), out, seconds=60, device="cpu", state=state,
            most_steps=most,
        )  # fmt: skip
        reached.append(step)
        state = out
        if done:
            break
    assert reached == [1, 2, 4, 8][: len(reached) - 1] + [SETTINGS.steps] and reached[-1] == SETTINGS.steps
    assert cleared == [0] * (len(reached) - 1)
    assert read_result(state).final_commitment == read_result(whole).final_commitment


@pytest.mark.parametrize("settings", [{"seeds": {}}, {"seeds": [1]}, {"inner": [1]}])
def test_settings_without_the_shards_seed_are_invalid_input(
    digits: Digits,
    shards: tuple[Path, Path],
    tmp_path: Path,
    settings: dict[str, Any],
) -> None:
    weights, shard = shards
    with pytest.raises(SpecError):
        run_task(digits.train_program, weights, shard, {**leased(shard), **settings}, tmp_path / "o", device="cpu")
