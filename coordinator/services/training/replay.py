"""Checking a training result from revealed checkpoints: a replay from the round's weights,
the step counters and the final weights against the pseudo-gradient. Pure file work, no database.

A result's metadata carries, per checkpoint, digest(model part) ‖ digest(optimizer part) and
the chain c_0..c_n over them (tensorgrid.training.commitments); its receipt signs c_n. An
audit draws a checkpoint e = checkpoints[segment + 1] and replays steps [0, e) from the
round's global weights, whose training state (zero moments, step 0) the coordinator knows,
so no node ever reveals optimizer moments. It checks:
  * the chain: read_result recomputes c_0..c_n from the digests; c_n is what the receipt signs;
  * c_0 itself, from the round's global weights: no reveal needed;
  * for e before the last checkpoint, the model part (weights, buffers, step counter) of
    checkpoint e is revealed and must hash to its committed model digest, with counter e (a
    lazy node re-committing an old state is caught here); the replay must land on it within a
    float tolerance per dtype (a node that skipped or faked steps is caught here);
  * for e the last checkpoint, nothing is revealed: the replay's own final weights must equal
    global − pseudo-gradient within the compression error and the replay tolerance;
  * always, the last checkpoint's model digest must be that of global − the decoded
    pseudo-gradient with counter n (commitments.final_model_part), which the coordinator
    computes itself: a node whose upload is not the final state it committed (scaled, or
    trained less than its chain says) is caught here with no reveal. Before, the node revealed
    checkpoint n's weights and they had to equal global − pseudo-gradient within the
    compression error: the same check, for the bytes of one more model per audit.
The replay covers every step before e, so a cheat in any segment before e is in reach: each
segment is at least as likely to be checked as when one segment was replayed from a revealed
full state, which cost the node 3 × the model's size per revealed checkpoint. A node that
commits its cheat consistently (its chain over the states it really reached, its last link
sealed over what it uploads) is caught only by a replay that reaches the cheat: that was so
when checkpoint n was revealed too, since the node chose what it committed there.
A finding that fails names what differs, and the digest of what the coordinator expected,
which is what a slash records.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from coordinator.services.training.cases import AuditCase, Finding, reveal_plan
from coordinator.services.verification.compare import tolerance
from tensorgrid.errors import TensorGridError
from tensorgrid.training.commitments import (
    DIGEST_BYTES,
    GENESIS,
    MODEL_PREFIX,
    STEP_KEY,
    chain_link,
    checkpoint_digest,
    checkpoint_steps,
    final_model_part,
    model_part,
    state_digest,
)
from tensorgrid.training.compression import SCALE_SUFFIX, PseudoGradient, read_result
from tensorgrid.training.inner import Replayer
from tensorgrid.workloads.tensorfile import load_tensors
from tensorgrid.workloads.tolerance import tolerance as replay_tolerance

__all__ = ["AuditCase", "Finding", "check_reveal", "reveal_plan"]

_FP16_REL = 2.0**-11  # half an fp16 ulp, relative
_FP16_ABS = 2.0**-25  # half the smallest fp16 subnormal step
_F32_SLOP = 1e-6  # relative float32 rounding of global − (global − local)
INERT_REL = 1e-5  # an element whose replayed |gradient| never passed this share of the largest is inert


class _Failed(Exception):
    def __init__(self, reason: str, evidence: bytes | str = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence.hex() if isinstance(evidence, bytes) else evidence


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
    if checkpoint_digest(start).hex() != result.checkpoint_digests[0].lower():
        raise _Failed(
            "the chain's first link c_0 does not commit the round's global weights at step 0",
            chain_link(GENESIS, checkpoint_digest(start)),
        )
    end = marks[case.segment + 1]
    models = {}
    for step in reveal_plan(marks, case.segment):
        if step not in case.revealed:
            raise _Failed(f"the checkpoint at step {step} was not revealed")
        models[step] = _revealed_model(case.revealed[step], step, marks.index(step), result.checkpoint_digests)
    try:
        replayed = replayer.replay(start, end)
    except TensorGridError as e:
        raise _Failed(f"steps 0→{end} cannot be replayed: {e}") from None
    replay = model_part(replayed.state)
    slack = inert_slack(replayed.grad_peaks, replay, s.lr, s.weight_decay, end)
    if end == marks[-1]:
        _check_final(case.result, case.weights, replay, result.compression, slack=slack)
    elif worst := _worst_mismatch(replay, models[end], slack):
        raise _Failed(
            f"replaying steps 0→{end} from the round's weights, the checkpoint {worst}: the node did not train them",
            state_digest(replay),
        )
    _check_sealed(result, case.weights)


def _check_sealed(result: PseudoGradient, weights_path: Path) -> None:
    """The last checkpoint's model digest must commit global − the decoded pseudo-gradient."""
    n = len(result.checkpoint_steps) - 1
    try:
        final = final_model_part(load_tensors(weights_path), result.tensors, result.checkpoint_steps[-1])
    except KeyError as e:
        raise _Failed(f"the pseudo-gradient holds {e}, which the round's weights do not") from None
    digest = state_digest(final)
    if digest.hex() != result.checkpoint_digests[-1][: 2 * DIGEST_BYTES].lower():
        raise _Failed(
            f"the pseudo-gradient is not global − final weights: global − pseudo-gradient does not hash to "
            f"the model digest c_{n} commits for step {result.checkpoint_steps[-1]} (the upload is not the "
            "final state the node committed)",
            digest,
        )


def _revealed_model(path: Path, step: int, i: int, digests: list[str]) -> dict[str, torch.Tensor]:
    """A revealed model part, checked against its committed digest and its step counter."""
    try:
        tensors = load_tensors(path)
    except TensorGridError as e:
        raise _Failed(f"the checkpoint revealed for step {step} is not a valid safetensors file: {e}") from None
    digest = state_digest(tensors)
    if digest.hex() != digests[i][: 2 * DIGEST_BYTES].lower():
        raise _Failed(f"the checkpoint revealed for step {step} does not hash to its model digest in c_{i}", digest)
    counter = tensors.get(STEP_KEY)
    if counter is None or counter.numel() != 1 or counter.is_floating_point() or int(counter) != step:
        got = "missing" if counter is None else counter.tolist()
        raise _Failed(f"the checkpoint committed for step {step} has the AdamW step counter {got}", digest)
    return tensors


def inert_slack(
    peaks: dict[str, torch.Tensor], model: dict[str, torch.Tensor], lr: float, weight_decay: float, steps: int
) -> dict[str, torch.Tensor]:
    """Extra tolerance, per element of each model tensor, for elements the loss does not depend on.

    An element whose gradient never rose above INERT_REL of the largest in the replay is inert
    (an attention key bias: softmax cancels it, so its true gradient is zero): backward hands it
    rounding noise, which differs with the thread count, and AdamW turns noise into steps of
    about lr. Two honest runs can then drift apart by up to the steps both could take: at most
    about 4·lr each (AdamW's step bound for the default betas) plus weight decay. Such elements
    are held to that bound instead of the float tolerance; no other element gets any slack.
    A node gains nothing by moving them within it: the loss does not depend on them."""
    top = max((float(t.max()) for t in peaks.values() if t.numel()), default=0.0)
    out: dict[str, torch.Tensor] = {}
    for name, peak in peaks.items():
        key = MODEL_PREFIX + name
        inert = peak <= INERT_REL * top
        if key in model and bool(inert.any()):
            drift = 2.0 * steps * lr * (4.0 + weight_decay * (model[key].double().abs() + 1.0))
            out[key] = torch.where(inert, drift, torch.zeros_like(drift))
    return out


def _worst_mismatch(
    reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], slack: dict[str, torch.Tensor] | None = None
) -> str:
    """'' when both states agree within the per-dtype tolerance (plus `slack` per element); else
    what differs most."""
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
        allowed = atol + rtol * bd.abs() + (slack[name] if slack and name in slack else 0.0)
        excess = ((ad - bd).abs() - allowed).nan_to_num(nan=float("inf"))
        m = float(excess.max()) if excess.numel() else -1.0
        if m > 0 and m > worst:
            worst, where = m, f"differs in {name}: max |Δ| = {float((ad - bd).abs().max()):.3g}"
    return where


def _check_final(
    result_path: Path,
    weights_path: Path,
    final: dict[str, torch.Tensor],
    compression: str,
    *,
    slack: dict[str, torch.Tensor] | None = None,
) -> None:
    """The coordinator's replayed final weights must be global − pseudo-gradient, within the
    compression error and the replay tolerance, plus `slack` for inert elements."""
    atol, rtol = replay_tolerance(torch.float32)
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
        gap = (pg.double() - true_pg).abs() - bound - _F32_SLOP * (g.abs() + lo.abs()) - 1e-7 - atol - rtol * lo.abs()
        if slack and MODEL_PREFIX + name in slack:
            gap = gap - slack[MODEL_PREFIX + name]
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
