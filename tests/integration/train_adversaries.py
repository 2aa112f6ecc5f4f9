"""Simulated training nodes, honest and cheating, driven through the real gRPC API (test-only).

  * honest: runs the task's inner steps like the node worker does;
  * lazy: trains fewer steps than asked yet reports a full-length commitment chain, either
    stopping halfway and re-committing its last real state for the remaining checkpoints
    ("stop_early"), or skipping every other step and forging the step counter ("skip");
  * scaler: trains honestly but uploads the pseudo-gradient × 3 (its commitments honest).
The cheaters' chains are over the states they really reached (the lazy ones' last link is not
sealed over their upload, the scaler's is sealed over its honest one): a cheater that also
seals its last link over what it uploads is caught only by a replay that reaches its cheat.
Every one answers reveal requests with the checkpoints it really has.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tensorgrid.blobs import file_sha256
from tensorgrid.crypto import Signer
from tensorgrid.nodeclient import NodeClient
from tensorgrid.training.commitments import chain, checkpoint_digest, checkpoint_steps, model_part
from tensorgrid.training.compression import PseudoGradient
from tensorgrid.training.inner import InnerSettings, _Run, checkpoint_name, run_inner, write_result
from tensorgrid.training.objective import load_weights
from tensorgrid.types import BlobRef, Lease
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.integration.adversaries import SimClient

BEHAVIOURS = ("honest", "lazy", "lazy_skip", "scaler")
Trainer = Callable[[Path, Path, Path, InnerSettings, Path], PseudoGradient]


def honest(program: Path, weights: Path, shard: Path, s: InnerSettings, ckpt: Path) -> PseudoGradient:
    return run_inner(program, weights, shard, s, checkpoint_dir=ckpt)


def scaler(program: Path, weights: Path, shard: Path, s: InnerSettings, ckpt: Path) -> PseudoGradient:
    r = run_inner(program, weights, shard, s, checkpoint_dir=ckpt)
    return replace(r, tensors={n: 3 * t for n, t in r.tensors.items()})


def lazy(
    program: Path, weights: Path, shard: Path, s: InnerSettings, ckpt: Path, mode: str = "stop_early"
) -> PseudoGradient:
    """Fewer real steps, a full-length chain (see the module docstring for the two modes)."""
    run = _Run(program, shard, s)
    load_weights(run.module, load_tensors(weights))
    start = {n: t.detach().clone() for n, t in run.module.state_dict().items()}
    marks = checkpoint_steps(s.steps, s.checkpoint_every)
    stop = marks[len(marks) // 2] if mode == "stop_early" else s.steps
    ckpt.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    digests: list[bytes] = []
    claimed = 0  # the step the node pretends to be at
    while True:
        if claimed in marks:
            state = run.state()
            digests.append(checkpoint_digest(state))
            save_tensors(model_part(state), ckpt / checkpoint_name(claimed))
        if claimed >= s.steps:
            break
        if claimed < stop and (mode != "skip" or claimed % 2 == 0):
            losses.append(run.train_step())  # run.step follows real steps ("stop_early": honest counters)
        else:
            losses.append(losses[-1] if losses else 0.0)
        claimed += 1
        if mode == "skip":
            run.step = claimed  # forge the counter so it matches the claimed step
    local = run.module.state_dict()
    pseudo = {n: (start[n] - local[n].detach()).float() for n in start if start[n].is_floating_point()}
    return PseudoGradient(pseudo, run.data.rows, s.steps, losses, marks, chain(digests), s.compression,
                          checkpoint_digests=[d.hex() for d in digests])  # fmt: skip


def lazy_skip(program: Path, weights: Path, shard: Path, s: InnerSettings, ckpt: Path) -> PseudoGradient:
    return lazy(program, weights, shard, s, ckpt, mode="skip")


TRAINERS: dict[str, Trainer] = {"honest": honest, "lazy": lazy, "lazy_skip": lazy_skip, "scaler": scaler}


def settings_for(lease: Lease, shard_sha: str) -> tuple[InnerSettings, str]:
    """The task's inner settings (its seed keyed by its shard) and its compression."""
    raw = lease.settings
    inner = dict(raw["inner"])  # type: ignore[call-overload]
    seeds = raw["seeds"]
    assert isinstance(seeds, dict)
    compression = str(raw.get("compression", "int8"))
    s = InnerSettings.from_dict({**inner, "seed": seeds[shard_sha], "device": "cpu", "compression": compression})
    return s, compression


@dataclass
class SimTrainer(SimClient):
    """One simulated node: leases training tasks, answers them its way, reveals when asked."""

    target: str
    behaviour: str
    workdir: Path
    torch_lock: asyncio.Lock
    signer: Signer = field(default_factory=Signer.generate)
    submitted: int = 0
    accepted: int = 0
    revealed: int = 0

    lease_wait_ms = 300

    async def _answer(self, client: NodeClient, lease: Lease) -> None:
        assert lease.model is not None and lease.kind == "training", lease
        blobs = lease.settings["blobs"]
        assert isinstance(blobs, dict)
        w = blobs["weights"]
        program, shard = await self._fetch(client, lease.model), await self._fetch(client, lease.input)
        weights = await self._fetch(client, BlobRef(w["sha256"], int(w["size"])))
        s, compression = settings_for(lease, lease.input.sha256)
        scratch = Path(tempfile.mkdtemp(dir=self.workdir, prefix="task-"))
        try:
            out, ckpt = scratch / "out.safetensors", scratch / "ckpt"
            async with self.torch_lock:  # torch.export.load is not thread-safe
                result = await asyncio.to_thread(TRAINERS[self.behaviour], program, weights, shard, s, ckpt)
                await asyncio.to_thread(write_result, result, out, compression)
            ref = file_sha256(out)
            receipt = client.sign(lease, ref, result.final_commitment)
            self.submitted += 1
            ok, _, steps = await client.submit_result(receipt, ref.size, out)
            self.accepted += int(ok)
            for step in steps:
                done, _ = await client.reveal(lease.task_id, lease.attempt, step, ckpt / checkpoint_name(step))
                self.revealed += int(done)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def cpu_threads(n: int) -> None:
    """Intra-op threads of this process (simulated nodes share it)."""
    torch.set_num_threads(n)
