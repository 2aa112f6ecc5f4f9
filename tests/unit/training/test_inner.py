from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorgrid.errors import ExecutionError
from tensorgrid.spec import AdamW, TrainingSpec
from tensorgrid.training.commitments import (
    DIGEST_BYTES,
    GENESIS,
    OPTIMIZER_PREFIX,
    chain,
    chain_link,
    checkpoint_digest,
    checkpoint_steps,
    final_model_part,
    state_digest,
)
from tensorgrid.training.compression import compress, decompress, seal, write_result
from tensorgrid.training.data import write_rows
from tensorgrid.training.inner import (
    InnerSettings,
    Replayer,
    checkpoint_name,
    initial_state,
    replay_segment,
    run_inner,
)
from tensorgrid.training.outer import initial_weights
from tensorgrid.training.schedule import cosine_lr
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.unit.training.conftest import REF, Digits

SETTINGS = InnerSettings(
    loss="cross_entropy", lr=1e-2, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8,
    steps=7, batch_size=16, seed=123, checkpoint_every=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def files(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inner")
    write_rows(digits.dataset, np.arange(100, 212), root / "shard.safetensors")
    initial_weights(digits.train_program, root / "w0.safetensors")
    return root / "w0.safetensors", root / "shard.safetensors"


def test_same_inputs_same_result(digits: Digits, files: tuple[Path, Path]) -> None:
    weights, shard = files
    a = run_inner(digits.train_program, weights, shard, SETTINGS)
    b = run_inner(digits.train_program, weights, shard, SETTINGS)
    assert a.commitments == b.commitments and a.losses == b.losses
    assert all(torch.equal(a.tensors[n], b.tensors[n]) for n in a.tensors)
    assert a.checkpoint_steps == [0, 3, 6, 7] and len(a.commitments) == 4 and len(a.losses) == 7
    assert len(a.final_commitment) == 64 and a.rows == 112
    assert set(a.tensors) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert a.losses[-1] < a.losses[0]
    other = run_inner(digits.train_program, weights, shard, InnerSettings(**{**SETTINGS.__dict__, "seed": 124}))
    assert other.commitments[0] == a.commitments[0] and other.final_commitment != a.final_commitment


def test_checkpoints_match_the_chain_and_replay_bit_exactly(
    digits: Digits, files: tuple[Path, Path], tmp_path: Path
) -> None:
    weights, shard = files
    result = run_inner(digits.train_program, weights, shard, SETTINGS, checkpoint_dir=tmp_path)
    assert result.compression == SETTINGS.compression == "int8"
    models = [load_tensors(tmp_path / checkpoint_name(s)) for s in result.checkpoint_steps[:-1]]
    assert not (tmp_path / checkpoint_name(7)).exists()  # the last checkpoint is never revealed
    assert not any(n.startswith(OPTIMIZER_PREFIX) for m in models for n in m)  # moments stay on the node
    assert [state_digest(m).hex() for m in models] == [d[:64] for d in result.checkpoint_digests[:-1]]
    assert chain(bytes.fromhex(d) for d in result.checkpoint_digests) == result.commitments
    # the last checkpoint commits global − the pseudo-gradient as the coordinator decodes it
    w0 = load_tensors(weights)
    decoded = decompress(compress(result.tensors, "int8"), "int8")
    sealed = state_digest(final_model_part(w0, decoded, 7)).hex()
    assert result.checkpoint_digests[-1][: 2 * DIGEST_BYTES] == sealed
    # pseudo-gradient = global − the final model state, whose optimizer part the last link commits
    replayer = Replayer(digits.train_program, shard, SETTINGS)
    final = replayer.replay(replayer.initial_state(weights), 7)
    assert torch.equal(result.tensors["0.weight"], w0["0.weight"] - final.state["model.0.weight"])
    assert final.digest[DIGEST_BYTES:].hex() == result.checkpoint_digests[-1][2 * DIGEST_BYTES :]
    assert sealed != final.digest[:DIGEST_BYTES].hex()  # int8: the upload is not the state bit for bit
    # a verifier replays steps 0 → 6 from the round's weights and lands on checkpoint 2 exactly
    start = replayer.initial_state(weights)
    assert chain_link(GENESIS, checkpoint_digest(start)).hex() == result.commitments[0]
    replay = replayer.replay(start, 6)
    assert chain_link(bytes.fromhex(result.commitments[1]), replay.digest).hex() == result.commitments[2]
    assert replay.losses == result.losses[:6]
    # and a segment replays from a full state at its start (3 → 6) just as well
    at3 = replayer.replay(replayer.initial_state(weights), 3).state
    again = replay_segment(digits.train_program, at3, shard, SETTINGS, end_step=6)
    assert again.digest == replay.digest and again.losses == result.losses[3:6]


def test_a_warm_up_ramps_the_learning_rate_and_replays_from_any_checkpoint(
    digits: Digits, files: tuple[Path, Path]
) -> None:
    weights, shard = files
    warm = InnerSettings(**{**SETTINGS.__dict__, "warmup_steps": 4})
    cold = run_inner(digits.train_program, weights, shard, SETTINGS)
    result = run_inner(digits.train_program, weights, shard, warm)
    assert result.losses[0] == cold.losses[0] and result.final_commitment != cold.final_commitment
    # the first step moves the weights by about lr/4 instead of lr (AdamW's first step is lr·sign(g))
    first = Replayer(digits.train_program, shard, warm)
    start = first.initial_state(weights)
    moved = first.replay(start, 1).state["model.0.bias"] - start["model.0.bias"]
    assert float(moved.abs().max()) == pytest.approx(SETTINGS.lr / 4, rel=0.05)
    # the schedule is a function of the step: a segment from a mid-run state lands where the run did
    at3 = Replayer(digits.train_program, shard, warm).replay(
        Replayer(digits.train_program, shard, warm).initial_state(weights), 3
    )
    tail = replay_segment(digits.train_program, at3.state, shard, warm, end_step=warm.steps)
    assert at3.losses + tail.losses == result.losses
    w0 = load_tensors(weights)
    assert all(torch.equal(pg, w0[n] - tail.state["model." + n]) for n, pg in result.tensors.items())
    assert tail.digest[DIGEST_BYTES:].hex() == result.checkpoint_digests[-1][2 * DIGEST_BYTES :]


def test_a_job_wide_cosine_continues_across_rounds_and_replays(digits: Digits, files: tuple[Path, Path]) -> None:
    weights, shard = files
    spec = TrainingSpec(
        train_program=REF, dataset=REF, rounds=4, inner_steps=7, batch_size=16, checkpoint_every=3,
        inner_optimizer=AdamW(lr=1e-2), inner_warmup_steps=2, inner_final_lr=1e-3,
    )  # fmt: skip
    first, third = InnerSettings.for_task(spec, 0, 0), InnerSettings.for_task(spec, 2, 1)
    assert (third.schedule_start, third.schedule_steps) == (14, 28)
    # each task warms up from its own step 0, on the cosine's value at its place in the job
    assert first.lr_at(0) == 1e-2 / 2 and first.lr_at(1) == cosine_lr(1e-2, 1e-3, 1, 28) < 1e-2
    assert third.lr_at(0) == pytest.approx(cosine_lr(1e-2, 1e-3, 14, 28) / 2)
    assert third.lr_at(6) == pytest.approx(cosine_lr(1e-2, 1e-3, 20, 28))
    assert cosine_lr(1e-2, 1e-3, 14, 28) == pytest.approx(5.5e-3)
    assert InnerSettings.from_dict(third.to_dict()) == third
    with pytest.raises(ExecutionError, match="invalid training settings"):
        InnerSettings.from_dict({**third.to_dict(), "final_lr": 0.02})  # above lr
    # a later round trains at a lower rate than round 0 from the same start, and replays exactly
    result = run_inner(digits.train_program, weights, shard, third)
    assert result.final_commitment != run_inner(digits.train_program, weights, shard, first).final_commitment
    replayer = Replayer(digits.train_program, shard, third)
    at3 = replayer.replay(replayer.initial_state(weights), 3)
    tail = replay_segment(digits.train_program, at3.state, shard, third, end_step=third.steps)
    assert at3.losses + tail.losses == result.losses
    w0 = load_tensors(weights)
    assert all(torch.equal(pg, w0[n] - tail.state["model." + n]) for n, pg in result.tensors.items())
    assert tail.digest[DIGEST_BYTES:].hex() == result.checkpoint_digests[-1][2 * DIGEST_BYTES :]


def test_tampered_checkpoint_breaks_the_chain(digits: Digits, files: tuple[Path, Path], tmp_path: Path) -> None:
    weights, shard = files
    result = run_inner(digits.train_program, weights, shard, SETTINGS, checkpoint_dir=tmp_path)
    state = (
        Replayer(digits.train_program, shard, SETTINGS)
        .replay(initial_state(digits.train_program, weights, shard, SETTINGS), 3)
        .state
    )
    assert chain_link(bytes.fromhex(result.commitments[0]), checkpoint_digest(state)).hex() == result.commitments[1]
    state["adamw.exp_avg_sq.0.bias"][0] += 1e-6  # the optimizer part is committed too
    assert chain_link(bytes.fromhex(result.commitments[0]), checkpoint_digest(state)).hex() != result.commitments[1]
    model = load_tensors(tmp_path / checkpoint_name(3))
    model["model.0.bias"][0] += 1e-6
    assert state_digest(model).hex() != result.checkpoint_digests[1][:64]


def test_checkpoint_steps() -> None:
    assert checkpoint_steps(6, 3) == [0, 3, 6]
    assert checkpoint_steps(5, 10) == [0, 5]


def test_settings_travel_as_a_dict() -> None:
    spec = TrainingSpec(train_program=REF, dataset=REF, seed=5)
    s = InnerSettings.for_task(spec, round=2, worker=1)
    assert InnerSettings.from_dict(s.to_dict()) == s
    assert s.seed != InnerSettings.for_task(spec, round=2, worker=0).seed
    with pytest.raises(ExecutionError, match="settings"):
        InnerSettings.from_dict({**s.to_dict(), "extra": 1})
    older = {k: v for k, v in s.to_dict().items() if k not in ("warmup_steps", "compression")}
    assert InnerSettings.from_dict(older) == s  # from a coordinator without warm-ups (int8 is the default)
    assert InnerSettings.for_task(TrainingSpec(train_program=REF, dataset=REF, compression="fp16"), 0, 0).compression \
        == "fp16"  # fmt: skip
    with pytest.raises(ExecutionError, match="invalid training settings"):
        InnerSettings.from_dict({**s.to_dict(), "compression": "zip"})
    assert (
        InnerSettings.for_task(TrainingSpec(train_program=REF, dataset=REF, inner_warmup_steps=3), 0, 0).warmup_steps
        == 3
    )
    with pytest.raises(ExecutionError, match="invalid training settings"):
        InnerSettings.from_dict({**s.to_dict(), "steps": 0})


def test_weights_must_fit_the_program(digits: Digits, files: tuple[Path, Path], tmp_path: Path) -> None:
    _, shard = files
    save_tensors({"0.weight": torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    with pytest.raises(ExecutionError, match="missing"):
        run_inner(digits.train_program, tmp_path / "bad.safetensors", shard, SETTINGS)


def test_batchnorm_buffers_travel_and_tokens_train(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)).train()
    export_program(bn, (torch.randn(4, 4),), tmp_path / "bn.pt2")
    initial_weights(tmp_path / "bn.pt2", tmp_path / "bn.safetensors")
    save_tensors({"features": torch.randn(32, 4), "labels": torch.randn(32)}, tmp_path / "reg.safetensors")
    mse = InnerSettings(**{**SETTINGS.__dict__, "loss": "mse", "steps": 3, "batch_size": 8})
    result = run_inner(tmp_path / "bn.pt2", tmp_path / "bn.safetensors", tmp_path / "reg.safetensors", mse)
    assert "1.running_mean" in result.tensors and "1.num_batches_tracked" not in result.tensors

    class Bigram(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.head = torch.nn.Linear(8, 50)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(tokens))

    export_program(Bigram().train(), (torch.randint(0, 50, (4, 9)),), tmp_path / "lm.pt2")
    initial_weights(tmp_path / "lm.pt2", tmp_path / "lm.safetensors")
    tokens = (torch.arange(24).unsqueeze(1) + torch.arange(10)) % 50  # learnable: next = this + 1
    save_tensors({"tokens": tokens}, tmp_path / "tok.safetensors")
    result = run_inner(tmp_path / "lm.pt2", tmp_path / "lm.safetensors", tmp_path / "tok.safetensors",
                       InnerSettings(**{**SETTINGS.__dict__, "steps": 8, "batch_size": 6}))  # fmt: skip
    assert result.losses[-1] < result.losses[0]


def test_the_node_agent_names_checkpoints_like_the_trainer() -> None:
    from node.agent import checkpoint_file
    from tensorgrid.training.inner import checkpoint_name

    assert [checkpoint_file(s) for s in (0, 5, 120)] == [checkpoint_name(s) for s in (0, 5, 120)]


def test_the_last_link_is_sealed_over_the_upload(digits: Digits, files: tuple[Path, Path], tmp_path: Path) -> None:
    """The last checkpoint digest depends on the compression (it commits the decoded upload):
    a result is written only with the compression it was sealed for, and changing the upload
    after sealing leaves a last link that no longer matches it."""
    weights, shard = files
    fp16 = InnerSettings(**{**SETTINGS.__dict__, "compression": "fp16"})
    a = run_inner(digits.train_program, weights, shard, SETTINGS)
    b = run_inner(digits.train_program, weights, shard, fp16)
    assert a.commitments[:-1] == b.commitments[:-1] and a.final_commitment != b.final_commitment
    assert a.checkpoint_digests[-1][2 * DIGEST_BYTES :] == b.checkpoint_digests[-1][2 * DIGEST_BYTES :]
    with pytest.raises(ValueError, match="sealed for 'int8' compression, not 'fp16'"):
        write_result(a, tmp_path / "a.safetensors", "fp16")
    w0 = load_tensors(weights)
    assert seal(b, w0, "int8").commitments == a.commitments  # sealing again gives the same chain
    scaled = seal(replace(a, tensors={n: 3 * t for n, t in a.tensors.items()}), w0, "int8")
    assert scaled.checkpoint_digests[:-1] == a.checkpoint_digests[:-1] and scaled.final_commitment != a.final_commitment
