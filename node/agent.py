"""The node agent: register, heartbeat, lease, execute, sign and submit — one asyncio loop.

The agent only dials out, so a node behind NAT works. It survives a coordinator restart
(it retries with backoff and registers again when its session is unknown), never runs a
workload in its own process, and drains on the first SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from node.cache import BlobCache
from node.executor import Executor, TaskOutcome, TaskRequest
from tensorgrid import serde
from tensorgrid.blobs import CHUNK_BYTES, file_sha256
from tensorgrid.crypto import Signer, registration_message, sign_message, sign_receipt
from tensorgrid.errors import TensorGridError
from tensorgrid.rpc import SESSION_METADATA_KEY, channel_options
from tensorgrid.types import BlobRef, Capabilities, Domain, ErrorKind, Lease, Receipt, TaskError
from tensorgrid.v1 import common_pb2, node_pb2, node_pb2_grpc

log = logging.getLogger("tensorgrid.node")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True)
class AgentConfig:
    coordinator: str
    work_dir: Path
    slots: int = 1
    device: str = "auto"
    threads: int = 0  # 0: torch's default
    rpc_timeout_s: float = 30.0


@dataclass
class _Session:
    token: str = ""
    domain: Domain | None = None
    heartbeat_s: float = 5.0
    active: dict[str, int] = field(default_factory=dict)  # task_id → attempt


class Agent:
    def __init__(self, config: AgentConfig, signer: Signer, caps: Capabilities, cache: BlobCache) -> None:
        self.config = config
        self.signer = signer
        self.caps = caps
        self.cache = cache
        self.executors = [Executor() for _ in range(max(1, config.slots))]
        self.draining = asyncio.Event()
        self.completed = 0
        self._session = _Session()
        self._registered = asyncio.Event()
        self._running: dict[str, Executor] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: node_pb2_grpc.NodeServiceStub | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        """Work until drained. Returns after in-flight tasks are finished or released."""
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self._channel = grpc.aio.insecure_channel(self.config.coordinator, options=channel_options())
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)
        try:
            await self._register_with_retry()
            heartbeat = asyncio.create_task(self._heartbeat_loop())
            await asyncio.gather(*(self._slot_loop(ex) for ex in self.executors))
            heartbeat.cancel()
            await self._heartbeat_once()  # tell the coordinator we are gone
        finally:
            for ex in self.executors:
                await ex.close()
            await self._channel.close()

    def drain(self) -> None:
        """Stop taking work; finish what is running."""
        if not self.draining.is_set():
            log.info("draining: finishing %d running task(s), taking no new work", len(self._running))
            self.draining.set()

    async def abort(self) -> None:
        """Second signal: kill running tasks now and give their leases back."""
        for task_id, ex in list(self._running.items()):
            await ex.cancel()
            attempt = self._session.active.get(task_id)
            if attempt is not None:
                await self._report(task_id, attempt, TaskError(ErrorKind.RELEASED, "node is shutting down"), timeout=2)

    # ---- registration and heartbeats ---------------------------------------------------------
    def _md(self) -> tuple[tuple[str, str], ...]:
        return ((SESSION_METADATA_KEY, self._session.token),)

    async def _register(self) -> None:
        assert self._stub is not None
        ch = await self._stub.GetChallenge(node_pb2.ChallengeRequest(address=self.signer.address),
                                           timeout=self.config.rpc_timeout_s)
        domain = serde.domain_from_pb(ch.domain)
        sig = sign_message(self.signer, registration_message(self.signer.address, ch.nonce, domain))
        resp = await self._stub.Register(
            node_pb2.RegisterRequest(address=self.signer.address, nonce=ch.nonce, signature=sig,
                                     capabilities=serde.caps_to_pb(self.caps), version="0.1.0"),
            timeout=self.config.rpc_timeout_s,
        )
        self._session.token = resp.session_token
        self._session.domain = serde.domain_from_pb(resp.domain)
        self._session.heartbeat_s = max(0.2, resp.heartbeat_interval_ms / 1000)
        self._registered.set()
        log.info("registered with %s as %s (%s)", self.config.coordinator, self.signer.address, self.caps.device_kind)

    async def _register_with_retry(self) -> None:
        delay = 0.2
        while not self.draining.is_set():
            try:
                await self._register()
                return
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE:
                    raise TensorGridError(f"the coordinator refused registration: {e.details()}") from None
                log.warning("coordinator %s unreachable (%s); retrying in %.1fs", self.config.coordinator,
                            e.code().name, delay)
            await self._sleep_or_drain(delay)
            delay = min(delay * 2, 10.0)

    async def _sleep_or_drain(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.draining.wait(), seconds)
        except TimeoutError:
            pass

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._session.heartbeat_s)
            await self._heartbeat_once()

    async def _heartbeat_once(self) -> None:
        assert self._stub is not None
        active = [node_pb2.LeaseKey(task_id=t, attempt=a) for t, a in self._session.active.items()]
        try:
            resp = await self._stub.Heartbeat(
                node_pb2.HeartbeatRequest(active=active, draining=self.draining.is_set()),
                metadata=self._md(), timeout=self.config.rpc_timeout_s,
            )
        except grpc.aio.AioRpcError as e:
            await self._on_rpc_error(e, "heartbeat")
            return
        for key in resp.revoked:
            ex = self._running.get(key.task_id)
            if ex is not None and self._session.active.get(key.task_id) == key.attempt:
                log.warning("lease on task %s was revoked; stopping it", key.task_id[:12])
                await ex.cancel()

    async def _on_rpc_error(self, e: grpc.aio.AioRpcError, what: str) -> None:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            log.info("session unknown to the coordinator (%s); registering again", what)
            self._registered.clear()
            await self._register_with_retry()
        elif e.code() in RETRYABLE:
            log.warning("%s failed: coordinator unavailable (%s)", what, e.code().name)
        else:
            log.warning("%s failed: %s: %s", what, e.code().name, e.details())

    # ---- work --------------------------------------------------------------------------------
    async def _slot_loop(self, ex: Executor) -> None:
        idle = 0.05
        while not self.draining.is_set():
            lease = await self._lease_one()
            if lease is None:
                await self._sleep_or_drain(idle)
                idle = min(idle * 2, 2.0)
                continue
            idle = 0.05
            await self._run_task(ex, lease)

    async def _lease_one(self) -> Lease | None:
        assert self._stub is not None
        await self._registered.wait()
        try:
            resp = await self._stub.LeaseTasks(node_pb2.LeaseRequest(max_tasks=1), metadata=self._md(),
                                               timeout=self.config.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            await self._on_rpc_error(e, "lease")
            await self._sleep_or_drain(0.5 + random.random())
            return None
        if not resp.leases:
            if resp.retry_after_ms:
                await self._sleep_or_drain(min(resp.retry_after_ms, 10_000) / 1000)
            return None
        return serde.lease_from_pb(resp.leases[0])

    async def _run_task(self, ex: Executor, lease: Lease) -> None:
        self._session.active[lease.task_id] = lease.attempt
        self._running[lease.task_id] = ex
        out = self.config.work_dir / f"{lease.task_id}-{lease.attempt}.out"
        try:
            outcome = await self._execute(ex, lease, out)
            if outcome.ok:
                await self._submit(lease, out)
            elif outcome.error is not None:
                log.warning("task %s failed: %s: %s", lease.task_id[:12], outcome.error.kind.value,
                            outcome.error.message[:300])
                await self._report(lease.task_id, lease.attempt, outcome.error)
        finally:
            self._running.pop(lease.task_id, None)
            self._session.active.pop(lease.task_id, None)
            out.unlink(missing_ok=True)

    async def _execute(self, ex: Executor, lease: Lease, out: Path) -> TaskOutcome:
        try:
            model = await self.cache.ensure(lease.model, self._fetcher(lease.model)) if lease.model else None
            inputs = await self.cache.ensure(lease.input, self._fetcher(lease.input))
        except (TensorGridError, grpc.aio.AioRpcError) as e:
            msg = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            return TaskOutcome(ok=False, rows=0, seconds=0.0,
                               error=TaskError(ErrorKind.BLOB_UNAVAILABLE, f"could not fetch inputs: {msg}"))
        device = self.config.device if lease.settings.get("device", "any") == "any" else str(lease.settings["device"])
        request = TaskRequest(
            kind=lease.kind, model_path=str(model) if model else None, input_path=str(inputs),
            output_path=str(out), settings=dict(lease.settings), device=device, threads=self.config.threads,
            memory_limit_bytes=lease.memory_limit_bytes, time_limit_s=lease.time_limit_ms / 1000,
        )
        return await ex.run(request)

    def _fetcher(self, ref: BlobRef):  # type: ignore[no-untyped-def]
        async def fetch(offset: int) -> AsyncIterator[bytes]:
            assert self._stub is not None
            call = self._stub.FetchBlob(common_pb2.FetchBlobRequest(sha256=ref.sha256, offset=offset),
                                        metadata=self._md())
            async for chunk in call:
                yield chunk.data

        return fetch

    async def _submit(self, lease: Lease, out: Path) -> None:
        assert self._stub is not None and self._session.domain is not None
        output = await asyncio.to_thread(file_sha256, out)
        receipt = sign_receipt(self.signer, self._session.domain, Receipt(
            job_id=lease.job_id, task_id=lease.task_id, attempt=lease.attempt,
            input_hash=lease.input.sha256, output_hash=output.sha256,
        ))

        async def chunks() -> AsyncIterator[node_pb2.ResultChunk]:
            header = node_pb2.ResultHeader(receipt=serde.receipt_to_pb(receipt), output_size=output.size)
            yield node_pb2.ResultChunk(header=header)
            with open(out, "rb") as f:
                while data := f.read(CHUNK_BYTES):
                    yield node_pb2.ResultChunk(data=data)

        for attempt in range(3):
            try:
                resp = await self._stub.SubmitResult(chunks(), metadata=self._md(), timeout=600)
                break
            except grpc.aio.AioRpcError as e:
                await self._on_rpc_error(e, "submit")
                if e.code() not in (*RETRYABLE, grpc.StatusCode.UNAUTHENTICATED) or attempt == 2:
                    return
                await asyncio.sleep(0.5 * 2**attempt)
        if resp.accepted:
            self.completed += 1
            log.info("task %s/%d accepted (%d done)", lease.task_id[:12], lease.attempt, self.completed)
        else:
            log.warning("task %s/%d rejected: %s", lease.task_id[:12], lease.attempt, resp.reason)

    async def _report(self, task_id: str, attempt: int, error: TaskError, timeout: float | None = None) -> None:
        assert self._stub is not None
        try:
            await self._stub.ReportFailure(
                node_pb2.FailureReport(task_id=task_id, attempt=attempt, error=serde.error_to_pb(error)),
                metadata=self._md(), timeout=timeout or self.config.rpc_timeout_s,
            )
        except grpc.aio.AioRpcError as e:
            log.warning("could not report the failure of task %s: %s", task_id[:12], e.details())
