"""A client stream refused at its start reads with its own status, not INTERNAL.

grpc.aio turns a status that arrives while the client is still writing into INTERNAL ("Internal
error from Core", grpc/grpc#36066): 0–3 in 100 of the 8 MiB results handed in here with a stale
session came back INTERNAL (12–80% against a server that refuses before any handler runs), which
the node takes for a refusal for good: it dropped the finished result (node.handin). The
coordinator now sends a go-ahead once a client stream is admitted, and the node writes nothing
before it (tensorgrid.rpc.send_admitted). Against the coordinator's real gRPC server, many times
over each: the refusal's code is the one it sent."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from coordinator.api.server import build_server
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig, PeerLimits, SessionLimits
from tensorgrid.crypto import Signer
from tensorgrid.nodeclient import NodeClient
from tensorgrid.rpc import RETRY_AFTER_METADATA_KEY
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.types import BlobRef, Capabilities, Receipt
from tensorgrid.v1 import node_pb2

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
SUBMITTER = "0x" + "11" * 20
TRIES = 100  # one wrong code fails the test
OUTPUT = b"\x01" * (8 << 20)  # streamed (SubmitResult): more than HTTP/2 lets a sender write ahead
RECEIPT = Receipt("ab" * 32, "cd" * 32, 1, "ef" * 32, "01" * 32)
Scenario = Callable[[NodeClient], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, peers: PeerLimits | None = None) -> None:
    """The scenario with a registered node's client of a real coordinator's gRPC server."""
    config = CoordinatorConfig(
        data_dir=tmp_path / "coord",
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        peers=peers or PeerLimits(),
        sessions=SessionLimits(failures_per_window=10_000),  # every call here fails authentication from 127.0.0.1
    )
    app = Coordinator(config)
    raw = canonical_json(NoopSpec(tasks=1))
    job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
    app.store.jobs.create_job(job, tasks, app.runtime.now_ms())

    async def main() -> None:
        server, port, _ = await build_server(app, "127.0.0.1:0")
        await server.start()
        node = NodeClient(f"127.0.0.1:{port}", Signer.generate(), timeout=10.0)
        try:
            await node.register(CPU)
            await scenario(node)
        finally:
            await node.close()
            await server.stop(0)
            await app.stop()

    asyncio.run(main())


async def refusal(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value


def test_a_streamed_result_with_a_stale_session_is_refused_unauthenticated_every_time(tmp_path: Path) -> None:
    async def scenario(node: NodeClient) -> None:
        node.token = "0" * 64  # a session the coordinator does not know (expired, or another's)
        codes = []
        for _ in range(TRIES):
            e = await refusal(node.submit_and_lease(RECEIPT, len(OUTPUT), OUTPUT))
            codes.append((e.code(), e.details()))
        assert set(codes) == {(grpc.StatusCode.UNAUTHENTICATED, "no valid session: register again")}
        # the same node, registered again, hands in a result of its own
        await node.register(CPU)
        (lease,), _ = await node.lease(1)
        receipt = node.sign(lease, BlobRef(hashlib.sha256(OUTPUT).hexdigest(), len(OUTPUT)))
        assert (await node.submit_and_lease(receipt, len(OUTPUT), OUTPUT)).accepted

    run(tmp_path, scenario)


def test_a_streamed_result_over_the_nodes_stream_limit_is_refused_with_its_retry_hint_every_time(
    tmp_path: Path,
) -> None:
    async def idle() -> AsyncIterator[node_pb2.ResultChunk]:
        await asyncio.sleep(3600)  # a stream that never sends: held open until cancelled
        yield node_pb2.ResultChunk()

    async def scenario(node: NodeClient) -> None:
        held = node.stub.SubmitResult(idle(), metadata=node.metadata)
        await asyncio.wait_for(held.initial_metadata(), 10)  # admitted: it holds the node's one stream
        codes = []
        for _ in range(TRIES):
            e = await refusal(node.submit_and_lease(RECEIPT, len(OUTPUT), OUTPUT))
            hint = dict(e.trailing_metadata() or ()).get(RETRY_AFTER_METADATA_KEY)
            codes.append((e.code(), hint))
        assert set(codes) == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "1000")}
        held.cancel()

    run(tmp_path, scenario, PeerLimits(streams_per_node=1))
