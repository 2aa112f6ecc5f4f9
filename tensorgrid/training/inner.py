"""The worker's side of a round: H AdamW steps from the global weights on one shard.

Deterministic by construction: step s trains on shard rows [s·B, (s+1)·B) (wrapping around
a short shard), and the RNG (dropout) is reseeded per step from (task seed, s). So any
segment of a run can be replayed from a full training state at its start (replay_segment);
a verifier replays from step 0, whose state it knows. On CPU with the same torch build and thread count, a replay is
bit-identical; elsewhere compare within a tolerance.

A fresh AdamW starts every task: workers are stateless between rounds (a round's workers
are whichever nodes hold its leases), unlike DiLoCo's fixed replicas.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from tensorgrid.errors import ExecutionError
from tensorgrid.training.commitments import (
    MODEL_PREFIX,
    OPTIMIZER_PREFIX,
    STEP_KEY,
    chain,
    checkpoint_digest,
    checkpoint_steps,
    model_part,
)
from tensorgrid.training.compression import PseudoGradient, read_result, seal, write_result
from tensorgrid.training.data import derive_seed
from tensorgrid.training.objective import Batches, compute_loss, forward, load_batches, load_weights, open_program
from tensorgrid.training.settings import InnerSettings
from tensorgrid.types import ErrorKind
from tensorgrid.workloads.inference import pick_device
from tensorgrid.workloads.tensorfile import load_tensors, read_header, save_tensors

__all__ = [
    "MODEL_PREFIX",
    "STEP_KEY",
    "InnerResult",
    "InnerSettings",
    "Partial",
    "ReplayResult",
    "Replayer",
    "checkpoint_name",
    "initial_state",
    "read_result",
    "replay_segment",
    "run_inner",
    "run_inner_for",
    "write_result",
]

InnerResult = PseudoGradient
_MODEL, _EXP_AVG, _EXP_AVG_SQ, _STEP = MODEL_PREFIX, OPTIMIZER_PREFIX + ".", OPTIMIZER_PREFIX + "_sq.", STEP_KEY


@dataclass(frozen=True)
class ReplayResult:
    """State after replaying a segment: checkpoint tensors, their checkpoint_digest and the losses."""

    step: int
    state: dict[str, torch.Tensor]
    digest: bytes
    losses: list[float]
    # per parameter, the largest |gradient| each element saw over the replayed steps
    grad_peaks: dict[str, torch.Tensor] = field(default_factory=dict)


class _Run:
    """A loaded program, its AdamW and a shard, able to step from any checkpoint."""

    def __init__(self, program: str | os.PathLike[str], shard: str | os.PathLike[str], s: InnerSettings) -> None:
        s.check()
        self.settings = s
        self.device = pick_device(s.device)
        self.module = open_program(program, self.device)
        self.params = list(self.module.named_parameters())
        self.grad_peaks: dict[str, torch.Tensor] | None = None
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.params], lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, eps=s.eps,
            foreach=False, fused=False,
        )  # fmt: skip
        self.data: Batches = load_batches(shard)
        if self.data.rows == 0:
            raise ExecutionError(ErrorKind.INVALID_INPUT, "the shard has no rows")
        self.step = 0

    def state(self) -> dict[str, torch.Tensor]:
        """The full training state: model state_dict, AdamW moments (zeros before step 1), step."""
        out = {_MODEL + n: t.detach().clone() for n, t in self.module.state_dict().items()}
        for name, p in self.params:
            st = self.optimizer.state.get(p, {})
            out[_EXP_AVG + name] = st["exp_avg"].clone() if st else torch.zeros_like(p)
            out[_EXP_AVG_SQ + name] = st["exp_avg_sq"].clone() if st else torch.zeros_like(p)
        out[_STEP] = torch.tensor(self.step, dtype=torch.int64)
        return out

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        names = {n for n, _ in self.params}
        expected = {_STEP} | {_EXP_AVG + n for n in names} | {_EXP_AVG_SQ + n for n in names}
        model = {k[len(_MODEL) :]: v for k, v in state.items() if k.startswith(_MODEL)}
        if set(state) - set(_MODEL + k for k in model) != expected:
            raise ExecutionError(ErrorKind.INVALID_INPUT, "the checkpoint does not match the program")
        load_weights(self.module, model)
        self.step = int(state[_STEP])
        self.optimizer.state.clear()
        if self.step > 0:
            for name, p in self.params:
                self.optimizer.state[p] = {
                    "step": torch.tensor(float(self.step)),
                    "exp_avg": state[_EXP_AVG + name].to(self.device, p.dtype).clone(),
                    "exp_avg_sq": state[_EXP_AVG_SQ + name].to(self.device, p.dtype).clone(),
                }

    def train_step(self) -> float:
        s, b = self.settings, self.settings.batch_size
        positions = torch.arange(self.step * b, (self.step + 1) * b) % self.data.rows
        inputs, targets = self.data.take(positions, self.device)
        if s.warmup_steps or s.final_lr is not None:  # a function of the step alone: replays agree
            for group in self.optimizer.param_groups:
                group["lr"] = s.lr_at(self.step)
        torch.manual_seed(derive_seed(s.seed, "step", self.step))  # dropout masks replay per step
        loss = compute_loss(forward(self.module, inputs), targets, s.loss)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ExecutionError(ErrorKind.PROGRAM_ERROR, f"training diverged: loss is {value} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_peaks is not None:  # a verifier's replay: which elements ever had a gradient
            for name, p in self.params:
                if p.grad is not None:
                    seen = p.grad.detach().abs()
                    prev = self.grad_peaks.get(name)
                    self.grad_peaks[name] = seen.clone() if prev is None else torch.maximum(prev, seen)
        self.optimizer.step()
        self.step += 1
        return value

    def run_until(self, end: int, checkpoint_dir: Path | None) -> tuple[list[float], list[bytes]]:
        """Step up to `end`; return losses and the digests at checkpoint steps reached (incl. start)."""
        marks = set(checkpoint_steps(self.settings.steps, self.settings.checkpoint_every))
        losses: list[float] = []
        digests: list[bytes] = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            while True:
                if self.step in marks:
                    state = self.state()
                    digests.append(checkpoint_digest(state))
                    # only the model part is ever revealed, and never the last one's (see commitments)
                    if checkpoint_dir is not None and self.step < self.settings.steps:
                        save_tensors(model_part(state), checkpoint_dir / checkpoint_name(self.step))
                if self.step >= end:
                    break
                losses.append(self.train_step())
        return losses, digests


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint at `step` inside a run's checkpoint_dir."""
    return f"step_{step:08d}.safetensors"


def run_inner(
    train_program_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    shard_path: str | os.PathLike[str],
    settings: InnerSettings,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> InnerResult:
    """Run settings.steps AdamW steps from the global weights; return global − local and commitments,
    sealed for settings.compression (the last checkpoint commits what the upload stands for).

    With checkpoint_dir, the model part of the training state at every checkpoint step but the
    last (model weights and buffers, the step counter; see commitments) is also saved there
    (checkpoint_name(step)), for the node to reveal when a verifier asks for it. The AdamW
    moments are committed by digest only: a verifier replays from step 0, where it knows them.
    """
    run = _Run(train_program_path, shard_path, settings)
    global_weights = load_tensors(weights_path)
    load_weights(run.module, global_weights)
    start = {n: t.detach().clone() for n, t in run.module.state_dict().items()}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    losses, digests = run.run_until(settings.steps, ckpt)
    return _sealed(run, start, global_weights, losses, digests)


def _sealed(
    run: _Run, start: dict[str, Tensor], weights: dict[str, Tensor], losses: list[float], digests: list[bytes]
) -> InnerResult:
    """The finished run's result: global − local, its commitments, sealed for its compression."""
    s, local = run.settings, run.module.state_dict()
    pseudo = {n: (start[n] - local[n].detach()).float().cpu() for n in start if start[n].is_floating_point()}
    result = PseudoGradient(
        tensors=pseudo,
        rows=run.data.rows,
        steps=s.steps,
        losses=losses,
        checkpoint_steps=checkpoint_steps(s.steps, s.checkpoint_every),
        commitments=chain(digests),
        checkpoint_digests=[d.hex() for d in digests],
    )
    return seal(result, weights, s.compression)


@dataclass(frozen=True)
class Partial:
    """Where a resumable run (run_inner_for) stopped: the full training state at `step`, the
    checkpoint digests reached so far, and the sealed result once the last step is done."""

    step: int
    state: dict[str, torch.Tensor]
    digests: dict[int, bytes]
    losses: list[float]  # of every step so far
    result: InnerResult | None


def run_inner_for(
    train_program_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    shard_path: str | os.PathLike[str],
    settings: InnerSettings,
    *,
    until: float,
    state: dict[str, torch.Tensor] | None = None,
    digests: dict[int, bytes] | None = None,
    losses: list[float] | None = None,
    most_steps: int = 0,
    keep_state: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Partial:
    """run_inner in parts: from `state` (a Partial's, with its digests and losses; None: step 0),
    step until time.monotonic() reaches `until` (read between steps, so at least one step), it
    has stepped `most_steps` times (0: no such bound) or the last step is done. Steps are
    functions of the step alone (their rows, lr and RNG), so the parts of a run make the run
    run_inner makes; the referee reviews a long task so, one request at a time. keep_state False:
    the caller holds `state` no more, so it is cleared once restored (its tensors freed: the
    referee's measured parts hold what a node's run holds, services.verification.memory_parts).
    on_step: told the inner steps done, once the run stands at its first and after each step (a
    step that raises is not done): how far a run that failed got (the referee's review)."""
    run = _Run(train_program_path, shard_path, settings)
    global_weights = load_tensors(weights_path)
    load_weights(run.module, global_weights)
    start = {n: t.detach().clone() for n, t in run.module.state_dict().items()}
    if state is not None:
        run.restore(state)
        if not keep_state:
            state.clear()
    marks = checkpoint_steps(settings.steps, settings.checkpoint_every)
    reached, trace = dict(digests or {}), list(losses or [])
    stepped, first = 0, run.step
    if on_step is not None:
        on_step(run.step)
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        while True:
            if run.step in marks and run.step not in reached:
                reached[run.step] = checkpoint_digest(run.state())
            enough = 0 < most_steps <= run.step - first
            if run.step >= settings.steps or (stepped and (time.monotonic() >= until or enough)):
                break
            trace.append(run.train_step())
            stepped += 1
            if on_step is not None:
                on_step(run.step)
    if run.step < settings.steps:
        return Partial(run.step, run.state(), reached, trace, None)
    result = _sealed(run, start, global_weights, trace, [reached[m] for m in marks])
    return Partial(run.step, {}, reached, trace, result)


class Replayer:
    """One loaded program and shard, for verifying a run: its step-0 state and any segment.

    Loading the program dominates a short replay, so a verifier checking c_0 and replaying a
    segment of the same task loads it once.
    """

    def __init__(
        self, train_program_path: str | os.PathLike[str], shard_path: str | os.PathLike[str], settings: InnerSettings
    ) -> None:
        self.settings = settings
        self._run = _Run(train_program_path, shard_path, settings)

    def initial_state(self, weights_path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
        """The training state at step 0 (global weights, zero moments): what c_0 commits to."""
        run = self._run
        run.optimizer.state.clear()
        run.step = 0
        load_weights(run.module, load_tensors(weights_path))
        return run.state()

    def replay(self, checkpoint: str | os.PathLike[str] | dict[str, torch.Tensor], end_step: int) -> ReplayResult:
        """Re-run steps [checkpoint's step, end_step) from a checkpoint file or state."""
        if not isinstance(checkpoint, dict):
            read_header(checkpoint)
            checkpoint = load_tensors(checkpoint)
        run = self._run
        run.restore(checkpoint)
        if not run.step <= end_step <= self.settings.steps:
            raise ExecutionError(ErrorKind.INVALID_INPUT, f"cannot replay from step {run.step} to {end_step}")
        losses: list[float] = []
        run.grad_peaks = {}
        try:
            with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
                while run.step < end_step:
                    losses.append(run.train_step())
            peaks = {name: t.cpu() for name, t in run.grad_peaks.items()}
        finally:
            run.grad_peaks = None
        state = run.state()
        return ReplayResult(
            step=run.step, state=state, digest=checkpoint_digest(state), losses=losses, grad_peaks=peaks
        )


def initial_state(
    train_program_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    shard_path: str | os.PathLike[str],
    settings: InnerSettings,
) -> dict[str, torch.Tensor]:
    """The training state at step 0 (global weights, zero moments): what c_0 commits to.

    A verifier computes it itself, so the chain's first link is checked without a reveal.
    """
    return Replayer(train_program_path, shard_path, settings).initial_state(weights_path)


def replay_segment(
    train_program_path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str] | dict[str, torch.Tensor],
    shard_path: str | os.PathLike[str],
    settings: InnerSettings,
    end_step: int,
) -> ReplayResult:
    """Re-run steps [checkpoint's step, end_step) from a full training state (for verifiers).

    A full state (model and optimizer parts) is what a node commits, not what it reveals: a
    verifier starts from initial_state (step 0) and compares result.state's model part with a
    revealed checkpoint within a tolerance, or result.digest with the committed
    checkpoint_digest when the hardware is the same (see coordinator/services/training/replay.py).
    """
    return Replayer(train_program_path, shard_path, settings).replay(checkpoint_path, end_step)
