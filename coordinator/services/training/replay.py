"""Checking a training result from revealed checkpoints: chain links, step counters, a replayed
segment and the final weights against the pseudo-gradient. Pure file work, no database.

A result's metadata carries the chain c_0..c_n over the full training state at each
checkpoint; its receipt signs c_n. Given the checkpoints at steps j, j+1 and n (the final
one), the coordinator checks:
  * c_0 itself, from the round's global weights (zero moments, step 0): no reveal needed;
  * every revealed checkpoint hashes into the chain at its position, and its AdamW step
    counter is its step (a lazy node re-committing an old state is caught here);
  * replaying steps [j, j+1) from checkpoint j lands on checkpoint j+1 within a float
    tolerance per dtype (a node that skipped or faked steps is caught here);
  * the final checkpoint's weights equal global − pseudo-gradient within the compression
    error (a node that scaled or altered its upload is caught here).
A finding that fails names what differs, and the digest of what the coordinator expected,
which is what a slash records.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coordinator.services.verification.compare import tolerance
from tensorgrid.errors import TensorGridError
from tensorgrid.training.commitments import GENESIS, chain_link, checkpoint_steps, state_digest
from tensorgrid.training.compression import SCALE_SUFFIX, read_result
from tensorgrid.training.inner import MODEL_PREFIX, STEP_KEY, InnerSettings, Replayer
from tensorgrid.workloads.tensorfile import load_tensors

__all__ = ["AuditCase", "Finding", "check_reveal", "reveal_plan"]

_FP16_REL = 2.0**-11  # half an fp16 ulp, relative
_FP16_ABS = 2.0**-25  # half the smallest fp16 subnormal step
_F32_SLOP = 1e-6  # relative float32 rounding of global − (global − local)


@dataclass(frozen=True)
class AuditCase:
    """Everything one audit needs, as local files."""

    program: Path
    shard: Path
    weights: Path  # the round's global weights
    result: Path  # the node's pseudo-gradient file
    settings: InnerSettings
    commitment: str  # what the receipt signed
    segment: int  # replay checkpoint_steps[segment] → checkpoint_steps[segment + 1]
    revealed: dict[int, Path] = field(default_factory=dict)  # step → checkpoint file


@dataclass(frozen=True)
class Finding:
    passed: bool
    reason: str = ""
    evidence: str = ""  # hex sha256 of what the coordinator computed (for a slash)
    replay_seconds: float = 0.0


class _Failed(Exception):
    def __init__(self, reason: str, evidence: bytes | str = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence.hex() if isinstance(evidence, bytes) else evidence


def reveal_plan(marks: list[int], segment: int) -> list[int]:
    """Checkpoint steps a node must reveal for `segment`: its start (unless step 0, which the
    coordinator computes itself), its end and the final checkpoint, without duplicates."""
    if not 0 <= segment < len(marks) - 1:
        raise ValueError(f"segment {segment} is not between two of {len(marks)} checkpoints")
    wanted = [marks[segment], marks[segment + 1], marks[-1]]
    return sorted({s for s in wanted if s != 0})


def check_reveal(case: AuditCase) -> Finding:
    """Run every check on the revealed checkpoints; never raises for a node's fault."""
    started = time.perf_counter()
    try:
        _check(case)
    except _Failed as f:
        return Finding(False, f.reason, f.evidence, time.perf_counter() - started)
    return Finding(True, "", "", time.perf_counter() - started)


def _check(case: AuditCase) -> None:
    s = case.settings
    try:
        result = read_result(case.result)
    except TensorGridError as e:
        raise _Failed(f"the result file is not a pseudo-gradient: {e}") from None
    marks, links = result.checkpoint_steps, result.commitments
    if marks != checkpoint_steps(s.steps, s.checkpoint_every) or len(links) != len(marks):
        raise _Failed(f"the result commits checkpoints at steps {marks[:8]}, not every {s.checkpoint_every} steps")
    if links[-1].lower() != case.commitment.lower().removeprefix("0x"):
        raise _Failed("the receipt's commitment is not the result's final chain hash")
    try:
        replayer = Replayer(case.program, case.shard, s)
    except TensorGridError as e:
        raise _Failed(f"the task cannot be replayed on the coordinator: {e}") from None
    start = replayer.initial_state(case.weights)
    if chain_link(GENESIS, state_digest(start)).hex() != links[0]:
        raise _Failed(
            "the chain's first link c_0 does not commit the round's global weights at step 0", state_digest(start)
        )
    states = {0: start}
    for step in sorted(case.revealed):
        states[step] = _linked_checkpoint(case.revealed[step], step, marks, links)
    j = case.segment
    a, b = marks[j], marks[j + 1]
    for step in (a, b, marks[-1]):
        if step not in states:
            raise _Failed(f"the checkpoint at step {step} was not revealed")
    try:
        replay = replayer.replay(states[a], b)
    except TensorGridError as e:
        raise _Failed(f"the checkpoint at step {a} cannot be replayed: {e}") from None
    worst = _worst_mismatch(replay.state, states[b])
    if worst:
        raise _Failed(
            f"replaying steps {a}→{b} from the revealed checkpoint {worst}: the node did not train them", replay.digest
        )
    _check_final(case.result, case.weights, states[marks[-1]], result.compression)


def _linked_checkpoint(path: Path, step: int, marks: list[int], links: list[str]) -> dict[str, torch.Tensor]:
    """A revealed checkpoint, checked against the chain at its position and its step counter."""
    try:
        tensors = load_tensors(path)
    except TensorGridError as e:
        raise _Failed(f"the checkpoint revealed for step {step} is not a valid safetensors file: {e}") from None
    i = marks.index(step)
    digest = state_digest(tensors)
    previous = GENESIS if i == 0 else bytes.fromhex(links[i - 1])
    if chain_link(previous, digest).hex() != links[i]:
        raise _Failed(f"the checkpoint revealed for step {step} does not hash to chain link c_{i}", digest)
    counter = tensors.get(STEP_KEY)
    if counter is None or counter.numel() != 1 or counter.is_floating_point() or int(counter) != step:
        got = "missing" if counter is None else counter.tolist()
        raise _Failed(f"the checkpoint committed for step {step} has the AdamW step counter {got}", digest)
    return tensors


def _worst_mismatch(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor]) -> str:
    """'' when both states agree within the per-dtype tolerance; else what differs most."""
    if set(reference) != set(candidate):
        diff = sorted(set(reference) ^ set(candidate))[:3]
        return f"holds other tensors ({diff})"
    worst, where = -1.0, ""
    for name, a in reference.items():
        b = candidate[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"has {name} as {b.dtype}{list(b.shape)}, the replay {a.dtype}{list(a.shape)}"
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return f"differs in {name} (exact)"
            continue
        atol, rtol = tolerance(a.dtype)
        ad, bd = a.double(), b.double()
        excess = ((ad - bd).abs() - (atol + rtol * bd.abs())).nan_to_num(nan=float("inf"))
        m = float(excess.max()) if excess.numel() else -1.0
        if m > 0 and m > worst:
            worst, where = m, f"differs in {name}: max |Δ| = {float((ad - bd).abs().max()):.3g}"
    return where


def _check_final(result_path: Path, weights_path: Path, final: dict[str, torch.Tensor], compression: str) -> None:
    """The final checkpoint's weights must be global − pseudo-gradient, within compression error."""
    result = read_result(result_path)
    stored = load_tensors(result_path)
    weights = load_tensors(weights_path)
    expected: dict[str, torch.Tensor] = {}
    for name, pg in result.tensors.items():
        local = final.get(MODEL_PREFIX + name)
        if local is None or name not in weights or local.shape != pg.shape:
            raise _Failed(f"the final checkpoint has no weights {name!r} shaped like the pseudo-gradient")
        g, lo = weights[name].double(), local.double()
        true_pg = g - lo
        expected[name] = true_pg.float()
        bound: float | torch.Tensor
        if compression == "int8":
            bound = float(stored[name + SCALE_SUFFIX]) / 2
        elif compression == "fp16":
            bound = true_pg.abs() * _FP16_REL + _FP16_ABS
        else:
            bound = 0.0
        gap = (pg.double() - true_pg).abs() - bound - _F32_SLOP * (g.abs() + lo.abs()) - 1e-7
        if bool((gap > 0).any()):
            worst = float((pg.double() - true_pg).abs().max())
            raise _Failed(
                f"the pseudo-gradient {name!r} is not global − final weights: off by up to {worst:.3g}, "
                f"beyond the {compression} compression error",
                _expected_digest(expected, weights, final),
            )


def _expected_digest(
    partial: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], final: dict[str, torch.Tensor]
) -> bytes:
    """Digest of the pseudo-gradient the final checkpoint implies (what the node should have sent)."""
    full = dict(partial)
    for name, w in weights.items():
        local = final.get(MODEL_PREFIX + name)
        if name not in full and local is not None and w.is_floating_point() and local.shape == w.shape:
            full[name] = (w.double() - local.double()).float()
    return hashlib.sha256(b"tensorgrid.expected_pseudo_gradient\0" + state_digest(full)).digest()
