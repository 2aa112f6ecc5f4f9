"""Piggybacked leasing over the real gRPC API of a coordinator process: the leases a result asks
for are granted, or withheld, exactly as LeaseTasks grants or withholds them."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

import grpc
import pytest

from tensorgrid import serde
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.rpc import LEASE_WAIT_MS, SMALL_RESULT_BYTES
from tensorgrid.types import BlobRef, Capabilities, JobState
from tensorgrid.v1 import node_pb2
from tests.procs import REFEREE_ENTRY, running

pytestmark = pytest.mark.integration
CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
EMPTY = BlobRef(hashlib.sha256(b"").hexdigest(), 0)
SHARED = pytest.mark.xdist_group("leasing")  # share one module grid per worker (see make_module_grid)


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Callable[..., LocalGrid]) -> LocalGrid:
    g = make_module_grid()
    g.start_coordinator()
    return g


@pytest.fixture
def grid(module_grid: LocalGrid) -> LocalGrid:
    """One coordinator for the tests whose bare nodes lease only their own job's tasks: each test
    leaves no open job behind."""
    module_grid.check_running()
    return module_grid


@SHARED
def test_piggybacked_leases_follow_lease_tasks(grid: LocalGrid) -> None:
    submitter = Signer.generate()
    with Client(grid.target, submitter) as client:
        job_id = client.submit_noop(6).job_id

    async def node() -> NodeClient:
        n = NodeClient(grid.target, Signer.generate())
        await n.register(CPU)
        return n

    async def scenario() -> None:
        busy, drained, sloppy = [await node() for _ in range(3)]
        # A busy node: each result brings the next lease, LeaseTasks is called once.
        (lease,), _ = await busy.lease(1)
        answer = await busy.submit_and_lease(busy.sign(lease, EMPTY), 0, b"", 1)
        assert answer.accepted and answer.retry_after_ms == 0
        (following,) = answer.leases
        assert following.job_id == job_id and following.task_id != lease.task_id and following.attempt == 1
        answer = await busy.submit_and_lease(busy.sign(following, EMPTY), 0, b"", 1)
        assert answer.accepted and len(answer.leases) == 1
        last = answer.leases[0]

        # A draining node delivers what it holds and is given nothing more, as LeaseTasks answers it.
        (held,), _ = await drained.lease(1)
        await drained.heartbeat([(held.task_id, held.attempt)], draining=True)
        answer = await drained.submit_and_lease(drained.sign(held, EMPTY), 0, b"", 1)
        assert answer.accepted and answer.leases == [] and answer.retry_after_ms == 1000
        assert await drained.lease(1) == ([], 1000)

        # A refused result brings no leases; LeaseTasks then says the node is backing off.
        (bad,), _ = await sloppy.lease(1)
        answer = await sloppy.submit_and_lease(sloppy.sign(bad, BlobRef("00" * 32, 1)), 1, b"x", 1)
        assert not answer.accepted and "hash" in answer.reason
        assert answer.leases == [] and answer.retry_after_ms == 0
        leases, retry = await sloppy.lease(1)
        assert leases == [] and retry > 0

        # The busy node finishes the job, the refused task included, asking as it goes.
        held_now = [last]
        while held_now:
            answer = await busy.submit_and_lease(busy.sign(held_now.pop(), EMPTY), 0, b"", 1)
            assert answer.accepted, answer.reason
            held_now.extend(answer.leases)
        for n in (busy, drained, sloppy):
            await n.close()

    asyncio.run(scenario())
    with Client(grid.target, submitter) as client:
        job = client.wait(job_id)
    assert job.state == JobState.SUCCEEDED and job.tasks_done == 6
    # A noop job runs no stranger's graph: the coordinator never started its referee (nor torch in it).
    assert not running(grid.coordinator().popen.pid, REFEREE_ENTRY)


@SHARED
def test_small_results_go_unary_and_large_ones_stream_both_with_leases(grid: LocalGrid) -> None:
    submitter = Signer.generate()
    with Client(grid.target, submitter) as client:
        job_id = client.submit_noop(3).job_id
    big = b"\x01" * (SMALL_RESULT_BYTES + 1)
    big_ref = BlobRef(hashlib.sha256(big).hexdigest(), len(big))

    async def scenario() -> None:
        n = NodeClient(grid.target, Signer.generate())
        await n.register(CPU)
        (lease,), _ = await n.lease(1)
        receipt = n.sign(lease, big_ref)
        header = node_pb2.ResultHeader(receipt=serde.receipt_to_pb(receipt), output_size=len(big), want_tasks=1)
        with pytest.raises(grpc.aio.AioRpcError) as e:  # too big for one message: SubmitResult streams it
            await n.stub.SubmitSmallResult(node_pb2.SmallResult(header=header, output=big), metadata=n.metadata)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "SubmitResult" in (e.value.details() or "")
        answer = await n.submit_and_lease(receipt, len(big), big, 1)  # streamed
        assert answer.accepted, answer.reason
        (following,) = answer.leases
        answer = await n.submit_and_lease(n.sign(following, EMPTY), 0, b"", 1)  # one unary call
        assert answer.accepted and len(answer.leases) == 1
        # A small result whose bytes do not match its receipt is refused like a streamed one.
        (last,) = answer.leases
        answer = await n.submit_and_lease(n.sign(last, EMPTY), 1, b"x", 1)
        assert not answer.accepted and "hash" in answer.reason and answer.leases == []
        await n.close()

    asyncio.run(scenario())
    with Client(grid.target, submitter) as client:
        assert client.job(job_id).tasks_done == 2
        client.cancel(job_id)  # its refused task stays open otherwise


def test_an_idle_long_poll_outlasts_the_old_wait_wakes_for_work_and_fails_at_once_with_its_coordinator(
    make_grid: Callable[..., LocalGrid],
) -> None:
    """An idle node's LeaseTasks is held past the 5 s polls used to last, a job submitted meanwhile
    reaches it at once, and a coordinator killed during a poll fails it at once (its sockets
    close), not when the 25 s wait or the call's deadline would have ended it."""
    grid = make_grid()
    coordinator = grid.start_coordinator()
    submitter = Signer.generate()

    def submit() -> str:
        with Client(grid.target, submitter) as client:
            return client.submit_noop(1).job_id

    async def scenario() -> tuple[bool, str, str, float, float, grpc.StatusCode]:
        node = NodeClient(grid.target, Signer.generate())
        await node.register(CPU)
        poll = asyncio.ensure_future(node.lease(1, wait_ms=LEASE_WAIT_MS))
        await asyncio.sleep(6.0)
        held = not poll.done()
        started = time.monotonic()
        job_id = await asyncio.to_thread(submit)
        (lease,), _ = await poll
        woke = time.monotonic() - started
        poll = asyncio.ensure_future(node.lease(1, wait_ms=LEASE_WAIT_MS))  # the queue is empty again
        await asyncio.sleep(1.0)
        await asyncio.to_thread(grid.kill_proc, coordinator)
        killed = time.monotonic()
        try:
            await poll
            raise AssertionError("the poll outlived its coordinator")
        except grpc.aio.AioRpcError as e:
            code = e.code()
        failed = time.monotonic() - killed
        await node.close()
        return held, job_id, lease.job_id, woke, failed, code

    held, job_id, leased, woke, failed, code = asyncio.run(scenario())
    assert held and leased == job_id
    assert woke < 5.0, woke  # the submission's round trips, not the rest of the wait
    assert failed < 2.0 and code == grpc.StatusCode.UNAVAILABLE, (failed, code)
