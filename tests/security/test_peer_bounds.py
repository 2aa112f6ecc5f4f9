"""A registered node attacking a real coordinator process over the raw gRPC API: memory, heartbeat,
stream-flood and failure-report attacks. Each is refused with a clear error, counted against the
attacker where it can be, and the coordinator keeps serving honest nodes while it lasts."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tensorgrid import serde
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.rpc import RETRY_AFTER_METADATA_KEY
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import BlobRef, Capabilities, ErrorKind, JobEvent, JobState, TaskError
from tensorgrid.v1 import common_pb2, node_pb2
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.datasets import save_digits
from tests.integration.adversaries import Pool, SimClient, SimNode
from tests.integration.conftest import make_grid, make_module_grid, stopper  # noqa: F401  (fixtures)
from tests.integration.train_adversaries import SimTrainer

SUBMITTER = Signer.generate()  # one submitter for the module: a job is visible to its submitter only

pytestmark = pytest.mark.integration
CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
EMPTY = BlobRef(hashlib.sha256(b"").hexdigest(), 0)
MiB = 1 << 20
Grids = Callable[..., LocalGrid]
START_S = 180  # a coordinator starting on a loaded machine (importing torch) can take a while
SHARED = pytest.mark.xdist_group("peer_bounds")  # share one module grid per worker (see make_module_grid)


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Grids) -> LocalGrid:  # noqa: F811
    g = make_module_grid()
    g.start_coordinator(timeout=START_S)
    return g


@pytest.fixture
def grid(module_grid: LocalGrid) -> LocalGrid:
    """One coordinator of default limits for the tests whose bare nodes (fresh keys) lease only
    their own job's tasks: each test leaves no open job behind."""
    module_grid.check_running()
    return module_grid


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, in MiB, from /proc."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def coordinator_pid(grid: LocalGrid) -> int:
    (proc,) = [p for p in grid.procs if p.name == "coordinator"]
    return proc.popen.pid


async def registered(grid: LocalGrid) -> NodeClient:
    node = NodeClient(grid.target, Signer.generate())
    await node.register(CPU)
    return node


async def finish(node: NodeClient, tasks: int, deadline_s: float = 60) -> int:
    """Lease and honestly complete tasks until `tasks` are done; returns how many this node did."""
    done, end = 0, time.monotonic() + deadline_s
    while done < tasks and time.monotonic() < end:
        leases, retry = await node.lease(tasks - done, wait_ms=500)
        for lease in leases:
            ok, reason = await node.submit(node.sign(lease, EMPTY), 0, b"")
            assert ok, reason
            done += 1
        if not leases:
            await asyncio.sleep(min(retry, 500) / 1000)
    return done


def records(grid: LocalGrid) -> dict[str, object]:
    with Client(grid.target, SUBMITTER) as client:
        return {n.address: n for n in client.nodes()}


def test_an_oversize_small_result_stream_is_refused_and_memory_stays_bounded(make_grid: Grids) -> None:  # noqa: F811
    grid = make_grid("--result-memory-mib", "1")
    grid.start_coordinator(timeout=START_S)
    pid = coordinator_pid(grid)
    with Client(grid.target, SUBMITTER) as client:
        job_id = client.submit_noop(4).job_id
    streams, per_stream = 4, 64  # 256 MiB sent at a result announced as 10 bytes, 4 calls at once

    async def flood(attacker: NodeClient) -> node_pb2.SubmitResultResponse:
        (lease,), _ = await attacker.lease(1)
        body = b"0123456789"
        receipt = attacker.sign(lease, BlobRef(hashlib.sha256(body).hexdigest(), len(body)))
        header = node_pb2.ResultHeader(receipt=serde.receipt_to_pb(receipt), output_size=len(body))

        async def chunks() -> AsyncIterator[node_pb2.ResultChunk]:
            yield node_pb2.ResultChunk(header=header)
            for _ in range(per_stream):
                yield node_pb2.ResultChunk(data=b"\x07" * MiB)

        return await attacker.stub.SubmitResult(chunks(), metadata=attacker.metadata, timeout=60)

    async def scenario() -> tuple[float, float]:
        attackers = [await registered(grid) for _ in range(streams)]
        before = rss_mib(pid)[1]
        answers = await asyncio.gather(*(flood(a) for a in attackers))
        peak = rss_mib(pid)[1]
        for answer in answers:
            assert not answer.accepted and "more output bytes than the 10" in answer.reason
        honest = await registered(grid)
        assert await finish(honest, 4) == 4  # the refused tasks went back to the pool
        for n in (*attackers, honest):
            await n.close()
        return before, peak

    before, peak = asyncio.run(scenario())
    # 256 MiB were sent; what the coordinator held stays far below (generous margin for the
    # transport's flow-control windows and the allocator)
    assert peak - before < 96, (before, peak)
    with Client(grid.target, SUBMITTER) as client:
        assert client.wait(job_id).state == JobState.SUCCEEDED
    refused = [n for n in records(grid).values() if n.rejections]  # type: ignore[attr-defined]
    assert len(refused) == streams


@SHARED
def test_a_huge_heartbeat_list_and_oversize_messages_are_refused(grid: LocalGrid) -> None:
    with Client(grid.target, SUBMITTER) as client:
        job_id = client.submit_noop(1).job_id

    async def scenario() -> None:
        node = await registered(grid)
        long_list = [node_pb2.LeaseKey(task_id=f"{i:x}", attempt=1) for i in range(1025)]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await node.stub.Heartbeat(node_pb2.HeartbeatRequest(active=long_list), metadata=node.metadata, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 1024 active leases" in (e.value.details() or "")
        huge = [node_pb2.LeaseKey(task_id="ab" * 32, attempt=i) for i in range(20_000)]  # ~1.5 MB
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await node.heartbeat([(k.task_id, k.attempt) for k in huge])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "Heartbeat message" in (e.value.details() or "")
        # control messages are small whoever sends them; blob chunks are at most about 1 MiB
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await node.stub.GetChallenge(node_pb2.ChallengeRequest(address="0x" + "a" * 200_000), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 65536 bytes" in (
            e.value.details() or ""
        )
        (lease,), _ = await node.lease(1)
        receipt = node.sign(lease, BlobRef("ab" * 32, 3 * MiB))
        chunks = [
            node_pb2.ResultChunk(
                header=node_pb2.ResultHeader(receipt=serde.receipt_to_pb(receipt), output_size=3 * MiB)
            ),
            node_pb2.ResultChunk(data=b"\x01" * (3 * MiB)),
        ]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await node.stub.SubmitResult(iter(chunks), metadata=node.metadata, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "SubmitResult message" in (
            e.value.details() or ""
        )
        # the node itself, and its real heartbeats, are fine
        assert await node.heartbeat([(lease.task_id, lease.attempt)]) == []
        await node.close()

    asyncio.run(scenario())
    with Client(grid.target, SUBMITTER) as client:
        client.cancel(job_id)  # its task is leased and never finished


def test_a_stream_flood_from_one_node_is_refused_while_others_are_served(make_grid: Grids) -> None:  # noqa: F811
    limit = 4
    grid = make_grid("--max-node-streams", str(limit), "--max-ip-streams", "3")
    grid.start_coordinator(timeout=START_S)
    with Client(grid.target, SUBMITTER) as client:
        client.submit_noop(2)

    async def idle() -> AsyncIterator[node_pb2.ResultChunk]:
        await asyncio.sleep(3600)  # a stream that never sends: held open until cancelled
        yield node_pb2.ResultChunk()

    async def fetch(node: NodeClient) -> bytes:
        call = node.stub.FetchBlob(common_pb2.FetchBlobRequest(sha256=EMPTY.sha256), metadata=node.metadata)
        return b"".join([chunk.data async for chunk in call])

    async def served(node: NodeClient) -> bool:
        """Whether a (short) stream of `node` is served now; False when refused for its streams."""
        try:
            return await fetch(node) == b""
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return False

    async def until(served_now: bool, node: NodeClient, what: str) -> None:
        """Until `node`'s streams are served (or refused): the coordinator counts streams as it
        handles their start and their end, which a loaded machine can take seconds to reach (a
        fixed pause of 1 s, then 0.5 s, was a race). A short fetch overlaps no other stream, so
        while the flood's streams are open a fetch served means they are not all counted yet."""
        deadline = time.monotonic() + 60
        while await served(node) != served_now:
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.1)

    async def scenario() -> None:
        flooder, other = await registered(grid), await registered(grid)
        held = [flooder.stub.SubmitResult(idle(), metadata=flooder.metadata) for _ in range(limit)]
        await until(False, flooder, "the flood's streams were never all open")
        for _ in range(3):  # past the limit: every further stream is refused, with a hint
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await fetch(flooder)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"{limit} streams open (limit {limit})" in (e.value.details() or "")
            hint = dict(e.value.trailing_metadata() or ()).get(RETRY_AFTER_METADATA_KEY)
            assert hint is not None and int(hint) > 0
        # another node is served meanwhile: streams, unary calls, a whole task
        assert await fetch(other) == b""
        assert await finish(other, 1) == 1
        # the flooder's unary calls still fit under its call limit
        (lease,), _ = await flooder.lease(1)
        # before a session, streams are counted per IP address: a stranger's flood of open
        # health watches is refused past the limit, while the nodes (counted by address) are served
        channel = grpc.aio.insecure_channel(grid.target)
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(3)]
        for w in watches:
            assert (await w.read()).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await health.Watch(health_pb2.HealthCheckRequest(service="")).read()
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "address 127.0.0.1 already has 3 streams open (limit 3)" in (e.value.details() or "")
        assert await fetch(other) == b""
        for call in (*held, *watches):
            call.cancel()
        await channel.close()
        await until(True, flooder, "the flood's streams were never released")  # served again
        ok, reason = await flooder.submit(flooder.sign(lease, EMPTY), 0, b"")
        assert ok, reason
        for n in (flooder, other):
            await n.close()

    asyncio.run(scenario())


@SHARED
def test_a_node_claiming_invalid_input_on_every_task_cannot_fail_a_job(grid: LocalGrid) -> None:
    tasks = 6
    with Client(grid.target, SUBMITTER) as client:
        job_id = client.submit_noop(tasks, max_attempts=1).job_id  # one attempt: one believed claim would fail it

    async def scenario() -> tuple[str, str, int]:
        liar, honest = await registered(grid), await registered(grid)
        leases, _ = await liar.lease(tasks)  # the liar takes every task first
        assert len(leases) == tasks
        for lease in leases:
            bad = TaskError(ErrorKind.INVALID_INPUT, "this input is not a tensor file (a lie)")
            assert await liar.report(lease.task_id, lease.attempt, bad) is True  # reissued, not failed
        done = await finish(honest, tasks)
        for n in (liar, honest):
            await n.close()
        return liar.signer.address, honest.signer.address, done

    liar, honest, done = asyncio.run(scenario())
    assert done == tasks
    with Client(grid.target, SUBMITTER) as client:
        job = client.wait(job_id)
        assert job.state == JobState.SUCCEEDED and job.tasks_done == tasks
        events = list(client.watch(job_id))
    record = records(grid)
    assert record[liar].rejections == tasks and record[liar].completed == 0  # type: ignore[attr-defined]
    assert record[liar].backoff_until_ms > 0  # type: ignore[attr-defined]
    assert record[honest].rejections == 0 and record[honest].completed == tasks  # type: ignore[attr-defined]
    assert sum("unconfirmed invalid_input" in e.message for e in events) == tasks


@SHARED
@pytest.mark.timeout(400)  # the referee's child starts with its first use (torch imports) on a loaded machine
def test_two_colluding_nodes_claiming_a_valid_input_is_bad_are_disproved_by_the_referee(
    grid: LocalGrid, tmp_path: Path
) -> None:
    model, inputs = tmp_path / "linear.pt2", tmp_path / "rows.safetensors"
    export_program(torch.nn.Linear(8, 4).eval(), (torch.randn(4, 8),), model)
    save_tensors({"x": torch.rand(8, 8)}, inputs)
    with Client(grid.target, SUBMITTER) as client:
        job_id = client.submit_inference(
            model, inputs, shard_rows=8, batch_size=4, device="cpu", max_attempts=2,  # two believed claims fail it
            verification=VerificationSpec(mode="none"),
        ).job_id  # fmt: skip
    lie = TaskError(ErrorKind.INVALID_INPUT, "input tensor 'x' is not a tensor file (a lie)")
    honest = functools.partial(SimNode, grid.target, "honest", Pool(), tmp_path)
    _lied_about_twice_then_disproved(grid, job_id, lie, "inference", honest)


async def lied_about_twice(
    grid: LocalGrid, job_id: str, lie: TaskError, make_honest: Callable[[], SimClient], kind: str = ""
) -> tuple[list[str], str, str]:
    """Two colluding nodes each lease the job's one task (of `kind`, when given) and report
    `lie`; then an honest node (made by make_honest) runs until the job ends, which must be in
    success. The liars' addresses, the honest node's, and the task's id."""
    liars = [await registered(grid), await registered(grid)]
    task_ids = set()
    for liar in liars:
        (lease,), _ = await liar.lease(1, wait_ms=5000)
        assert not kind or lease.kind == kind
        assert await liar.report(lease.task_id, lease.attempt, lie) is True  # reissued or contested, not failed
        task_ids.add(lease.task_id)
    honest = make_honest()  # leases it once the referee put it back
    stop = asyncio.Event()
    run = asyncio.create_task(honest.run(stop))
    try:
        with Client(grid.target, SUBMITTER) as client:
            job = await asyncio.to_thread(client.wait, job_id)
    finally:
        stop.set()
        await run
        for liar in liars:
            await liar.close()
    assert job.state == JobState.SUCCEEDED, job.error
    [task_id] = task_ids
    return [liar.signer.address for liar in liars], honest.signer.address, task_id


def _lied_about_twice_then_disproved(
    grid: LocalGrid, job_id: str, lie: TaskError, kind: str, make_honest: Callable[[], SimClient]
) -> list[JobEvent]:
    """Two colluding nodes each lease the job's one task and report `lie`; the referee runs it,
    puts it back, an honest node (made by make_honest) does it and the job succeeds. The job's
    events, once the liars were counted as rejecting it and the honest node as completing it."""
    (first, second), honest, _ = asyncio.run(lied_about_twice(grid, job_id, lie, make_honest, kind))
    with Client(grid.target, SUBMITTER) as client:
        events = list(client.watch(job_id))
    assert [e.kind for e in events].count("contested") == 1
    assert any(e.kind == "reissued" and "claims disproved" in e.message for e in events), events
    record = records(grid)
    assert record[first].rejections == 1 and record[second].rejections == 1  # type: ignore[attr-defined]
    assert record[honest].completed == 1  # type: ignore[attr-defined]
    return events


@SHARED
@pytest.mark.timeout(400)  # as above: the referee's child, and a training run in it, on a loaded machine
def test_two_colluding_nodes_claiming_a_valid_training_task_is_bad_are_disproved_and_training_finishes(
    grid: LocalGrid, tmp_path: Path
) -> None:
    train, dataset = tmp_path / "train.pt2", tmp_path / "digits.safetensors"
    save_digits(dataset)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    export_program(mlp.train(), (torch.randn(4, 64),), train)
    with Client(grid.target, SUBMITTER) as client:
        job_id = client.submit_training(
            train, dataset, rounds=1, workers_per_round=1, inner_steps=4, batch_size=8, device="cpu",
            max_attempts=2, verification=VerificationSpec(mode="none"),  # two believed claims fail it
        ).job_id  # fmt: skip
    lie = TaskError(ErrorKind.INVALID_INPUT, "the shard is not a tensor file (a lie)")
    honest = functools.partial(SimTrainer, grid.target, "honest", tmp_path, asyncio.Lock())
    events = _lied_about_twice_then_disproved(grid, job_id, lie, "training", honest)
    assert [e.kind for e in events].count("round") == 1


@SHARED
def test_two_nodes_confirming_invalid_input_fail_the_task_as_before(grid: LocalGrid) -> None:
    with Client(grid.target, SUBMITTER) as client:
        job_id = client.submit_noop(1, max_attempts=2).job_id
    bad = TaskError(ErrorKind.INVALID_INPUT, "input tensor 'x' has 3 dims, the model takes 2")

    async def scenario() -> tuple[str, str]:
        first, second = await registered(grid), await registered(grid)
        (lease,), _ = await first.lease(1)
        assert await first.report(lease.task_id, lease.attempt, bad) is True  # one word: reissued
        (lease,), _ = await second.lease(1, wait_ms=2000)
        assert await second.report(lease.task_id, lease.attempt, bad) is False  # confirmed: both attempts spent
        for n in (first, second):
            await n.close()
        return first.signer.address, second.signer.address

    first, second = asyncio.run(scenario())
    with Client(grid.target, SUBMITTER) as client:
        job = client.wait(job_id)
    assert job.state == JobState.FAILED and "failed 2 times" in job.error and "invalid_input" in job.error
    record = records(grid)
    assert record[first].rejections == 0 and record[second].rejections == 0  # type: ignore[attr-defined]
