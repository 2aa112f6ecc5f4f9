"""Simulated nodes that cheat, driven through the real gRPC API (test-only).

Each behaviour leases tasks like any node (spot-checks included: a check looks like any
inference task) and answers them its own way. Honest simulated nodes share what they
computed, so a copying adversary has another node's real result to copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.nodeclient import NodeClient
from tensorgrid.types import BlobRef, Capabilities, Lease, Receipt
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import load_program

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
HEARTBEAT_S = 0.3  # the tests' --heartbeat-ms
BEHAVIOURS = ("noise", "zeros", "stale", "corrupt1pct", "copy", "wrongkey", "late", "replay")
# Not in the mix above: "shapeaware" answers honestly whatever looks like a check (fewer rows
# than the biggest task it has seen) and returns zeros for what looks like a job's shard.


@dataclass
class Pool:
    """Results honest simulated nodes computed: task id → output bytes."""

    outputs: dict[str, bytes] = field(default_factory=dict)
    # torch.export.load is not thread-safe: simulated nodes take turns at the model, loaded
    # once (as a node's warm worker keeps it), so a queue of simulated nodes stays quick
    torch_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)

    def module(self, model: Path) -> torch.nn.Module:
        if model.name not in self.modules:
            self.modules[model.name] = load_program(model, torch.device("cpu"))
        return self.modules[model.name]


class SimClient:
    """What every simulated node does alike: register, lease one task at a time, fetch blobs
    into a shared work dir. Subclasses say how they answer a lease."""

    target: str
    workdir: Path
    signer: Signer
    lease_wait_ms = 500
    expelled = ""  # why the coordinator stopped leasing to it, if it did
    lost = 0  # leases that ran out before it could fetch their blobs

    @property
    def address(self) -> str:
        return self.signer.address

    async def run(self, stop: asyncio.Event) -> None:
        client = NodeClient(self.target, self.signer)
        await client.register(CPU)
        self.held: set[tuple[str, int]] = set()
        beat = asyncio.create_task(self._heartbeats(client))
        try:
            while not stop.is_set():
                try:
                    leases, retry = await client.lease(1, wait_ms=self.lease_wait_ms)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.PERMISSION_DENIED:
                        raise
                    self.expelled = e.details() or "permission denied"  # e.g. its stake was slashed
                    return
                for lease in leases:
                    self.held.add((lease.task_id, lease.attempt))
                    try:
                        await self._answer(client, lease)
                    except grpc.aio.AioRpcError as e:
                        # its lease ran out while it waited for the shared model: the blobs are
                        # no longer its to fetch (a node daemon reports the task failed)
                        if e.code() != grpc.StatusCode.PERMISSION_DENIED or "holds no lease" not in (e.details() or ""):
                            raise
                        self.lost += 1
                    finally:
                        self.held.discard((lease.task_id, lease.attempt))
                if not leases:
                    await asyncio.sleep(min(retry, 200) / 1000)
        finally:
            beat.cancel()
            await client.close()

    async def _heartbeats(self, client: NodeClient) -> None:
        """Keep held leases alive as a node daemon does: on a loaded machine a simulated node
        waiting for the shared torch lock can take longer than the tests' 1.5 s lease."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await client.heartbeat(sorted(self.held))
            except grpc.aio.AioRpcError:
                pass  # the next beat retries; a lease lost meanwhile is the test's to see

    async def _answer(self, client: NodeClient, lease: Lease) -> None:
        raise NotImplementedError

    async def _fetch(self, client: NodeClient, ref: BlobRef) -> Path:
        path = self.workdir / ref.sha256
        if not path.exists():
            data = b"".join([c async for c in client.fetch(ref)])
            tmp = path.with_suffix(f".{self.address}")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path


@dataclass
class SimNode(SimClient):
    target: str
    behaviour: str  # "honest" or one of BEHAVIOURS
    pool: Pool
    workdir: Path
    signer: Signer = field(default_factory=Signer.generate)
    submitted: int = 0
    accepted: int = 0
    old: tuple[Receipt, bytes] | None = None
    leases: list[Lease] = field(default_factory=list)  # every lease it got, in order
    biggest: int = 0  # rows of the biggest task seen (shapeaware)

    async def _honest(self, client: NodeClient, lease: Lease) -> bytes:
        assert lease.model is not None
        model, inputs = await self._fetch(client, lease.model), await self._fetch(client, lease.input)
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            out = Path(tmp) / "out.safetensors"
            settings = lease.settings
            async with self.pool.torch_lock:
                module = await asyncio.to_thread(self.pool.module, model)
                await asyncio.to_thread(
                    run_inference,
                    model,
                    inputs,
                    out,
                    batch_size=int(str(settings.get("batch_size") or 0)),
                    device="cpu",
                    module=module,
                )
            return out.read_bytes()

    async def _answer(self, client: NodeClient, lease: Lease) -> None:
        self.leases.append(lease)
        honest = await self._honest(client, lease)
        body, receipt = self._cheat(client, lease, honest)
        if self.behaviour == "late":
            self.held.discard((lease.task_id, lease.attempt))
            await asyncio.sleep(3.0)  # no heartbeat: the 1.5 s lease expires first
        self.submitted += 1
        ok, _ = await client.submit(receipt, len(body), body)
        self.accepted += int(ok)
        if self.behaviour == "honest":
            self.pool.outputs[lease.task_id] = honest
        if self.behaviour == "replay" and self.old is None:
            self.old = (receipt, body)

    def _cheat(self, client: NodeClient, lease: Lease, honest: bytes) -> tuple[bytes, Receipt]:
        b = self.behaviour
        out = {k: v.clone() for k, v in st_load(honest).items()}
        if b == "noise":
            out = {k: torch.randn_like(v) for k, v in out.items()}
        elif b == "zeros":
            out = {k: torch.zeros_like(v) for k, v in out.items()}
        elif b == "shapeaware":
            rows = _rows(honest)
            self.biggest = max(self.biggest, rows)
            if rows >= self.biggest:  # looks like a shard, not a small check: cheat
                out = {k: torch.zeros_like(v) for k, v in out.items()}
        elif b == "corrupt1pct":
            for v in out.values():
                n = v.shape[0]
                for r in random.sample(range(n), max(1, n // 100)):
                    v[r] += 1.0
        elif b in ("stale", "copy"):
            other = [x for t, x in self.pool.outputs.items() if t != lease.task_id and _rows(x) == lease.rows]
            if b == "copy" and other:
                out = st_load(random.choice(other))
            else:  # a cached answer: this shard's rows, one place off
                out = {k: torch.roll(v, 1, 0) for k, v in out.items()}
        body = st_save(out) if b != "honest" else honest
        ref = BlobRef(hashlib.sha256(body).hexdigest(), len(body))
        receipt = client.sign(lease, ref)
        if b == "wrongkey":
            assert client.domain is not None
            receipt = sign_receipt(Signer.generate(), client.domain, receipt)
        if b == "replay" and self.old is not None:
            receipt, body = self.old
        elif b == "replay":  # first answer honest; every later one replays its receipt
            body = honest
            receipt = client.sign(lease, BlobRef(hashlib.sha256(body).hexdigest(), len(body)))
        return body, receipt


def _rows(body: bytes) -> int:
    return next(iter(st_load(body).values())).shape[0]


def load_bytes(body: bytes) -> dict[str, torch.Tensor]:
    return st_load(io.BytesIO(body).getvalue())
