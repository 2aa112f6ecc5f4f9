"""node.handin against a real grpc.aio server on 127.0.0.1: a finished result whose lease a
heartbeat says was revoked, while its submission is being retried (the coordinator restarting),
is still handed in and the coordinator's answer decides; it is dropped only once answered (taken,
rejected, or refused as not worth retrying). A lease that expired, or that a restart left behind,
still takes its node's result while nobody else's is in (coordinator: tasks.lost_lease): the
node used to throw that work away as soon as it heard the lease was revoked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from node.agent import Agent
from node.cache import BlobCache
from node.config import AgentConfig
from tensorgrid.crypto import Signer
from tensorgrid.types import BlobRef, Capabilities, Domain, Lease
from tensorgrid.v1 import node_pb2, node_pb2_grpc

DOMAIN = Domain("TensorGrid", "1", 31337, "0x" + "11" * 20)
LEASE = Lease("aa" * 32, "bb" * 32, 1, 0, "inference", None, BlobRef("ab" * 32, 6))
KEY = (LEASE.task_id, LEASE.attempt)


class Restarting(node_pb2_grpc.NodeServiceServicer):
    """A coordinator that is away for the first result it is sent (UNAVAILABLE); the node's
    heartbeat hears the lease revoked meanwhile (`revoke`, before that call is answered). Then it
    is back and answers `answer`: taken, rejected, or refused with a status code."""

    def __init__(self, answer: str, revoke: asyncio.Event, revoked: asyncio.Event) -> None:
        self.answer, self.revoke, self.revoked = answer, revoke, revoked
        self.calls: list[str] = []  # the task of each result received

    async def SubmitSmallResult(  # noqa: N802 (the gRPC method's name)
        self, request: node_pb2.SmallResult, context: grpc.aio.ServicerContext
    ) -> node_pb2.SubmitResultResponse:
        self.calls.append(request.header.receipt.task_id)
        if len(self.calls) == 1:
            self.revoke.set()
            await self.revoked.wait()  # the node knows the lease is revoked before this call fails
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        if self.answer == "refused":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        accepted = self.answer == "accepted"
        return node_pb2.SubmitResultResponse(accepted=accepted, reason="" if accepted else "someone else's is in")


async def _hand_in(tmp_path: Path, answer: str, kept: bool) -> tuple[list[str], object, bool]:
    """Hand one result in through the slot's path (HandIn.submit) or as one kept on disk by an
    earlier run (HandIn.hand_in_kept); the calls the server saw, what hand-in returned, and
    whether the result is still kept on disk."""
    revoke, revoked = asyncio.Event(), asyncio.Event()
    coordinator = Restarting(answer, revoke, revoked)
    server = grpc.aio.server()
    node_pb2_grpc.add_NodeServiceServicer_to_server(coordinator, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    a = Agent(
        AgentConfig(f"127.0.0.1:{port}", tmp_path / "work"),
        Signer.generate(),
        Capabilities(device_kind="cpu", memory_bytes=1 << 30, cpu_cores=1),
        BlobCache(tmp_path / "cache", 1 << 20),
    )
    a.client.domain = DOMAIN  # as Register would have set it
    out = tmp_path / "result.out"
    out.write_bytes(b"result")

    async def heartbeat() -> None:  # what node.agent does with a heartbeat's `revoked`
        await revoke.wait()
        a._revoked.add(KEY)
        revoked.set()

    beat = asyncio.create_task(heartbeat())
    try:
        if kept:
            a.pending.keep(a.client.sign(LEASE, BlobRef("cd" * 32, 6)), out)
            result: object = await a.handin.hand_in_kept()
        else:
            result = await a.handin.submit(LEASE, out)
        return coordinator.calls, result, a.pending.any()
    finally:
        beat.cancel()
        await a.client.close()
        await server.stop(0)


@pytest.mark.parametrize("kept", [False, True], ids=["just-finished", "kept-by-an-earlier-run"])
@pytest.mark.parametrize("answer", ["accepted", "rejected", "refused"])
def test_a_result_whose_lease_was_revoked_while_it_was_retried_is_handed_in_and_the_coordinator_decides(
    tmp_path: Path, answer: str, kept: bool
) -> None:
    calls, result, still_kept = asyncio.run(_hand_in(tmp_path, answer, kept))
    assert calls == [LEASE.task_id] * 2  # handed in once more after the revocation (once only, before)
    assert not still_kept  # answered: no longer kept on disk
    if not kept:
        assert result == (answer == "accepted", [], [])
