"""Hostile submitters and nodes over the real gRPC API of a real coordinator process.

A stranger (a fresh key) must not list, read, watch, download or cancel another submitter's
job: it is answered NOT_FOUND, exactly as for a job or blob that does not exist. Calls need a
session; uploads are bounded by per-submitter quotas; a node reads only the blobs of the tasks
it holds a lease on. Every refusal leaves the owner's work intact.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer, cancel_message, sign_message
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.rpc import SESSION_METADATA_KEY
from tensorgrid.spec import InferenceSpec
from tensorgrid.types import BlobRef, Capabilities, ErrorKind, JobState, TaskError
from tensorgrid.v1 import common_pb2, submit_pb2, submit_pb2_grpc
from tests.integration.conftest import Assets

pytestmark = pytest.mark.integration
CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
EMPTY = BlobRef(hashlib.sha256(b"").hexdigest(), 0)
NOT_FOUND = grpc.StatusCode.NOT_FOUND
SHARED = pytest.mark.xdist_group("submitter_access")  # share one module grid per worker (see make_module_grid)


@pytest.fixture(scope="module")
def operator() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Callable[..., LocalGrid], operator: Signer) -> LocalGrid:
    g = make_module_grid("--operator-address", operator.address)
    g.start_coordinator()
    return g


@pytest.fixture
def grid(module_grid: LocalGrid) -> LocalGrid:
    """One coordinator for the tests that each check only their own jobs, blobs and calls; each
    leaves no job a CPU node could lease, so a bare node of the next test leases only its own.
    Not for the rate limit's test: failed authentications count per peer address, and every
    test calls from 127.0.0.1."""
    module_grid.check_running()
    return module_grid


def _code(fn: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(CoordinatorError) as e:
        fn()
    return e.value.code


def _finish_noop(target: str, job_id: str, tasks: int) -> None:
    """A bare node leases the job's tasks and returns empty outputs, so the job gets a result."""

    async def run() -> None:
        node = NodeClient(target, Signer.generate())
        await node.register(CPU)
        done = 0
        while done < tasks:
            leases, _ = await node.lease(tasks)
            for lease in leases:
                assert lease.job_id == job_id
                ok, reason = await node.submit(node.sign(lease, EMPTY), 0, b"")
                assert ok, reason
                done += 1
            if not leases:
                await asyncio.sleep(0.1)
        await node.close()

    asyncio.run(run())


@SHARED
def test_a_stranger_sees_nothing_of_anothers_job(
    grid: LocalGrid,
    operator: Signer,
    digits: Assets,
    tmp_path: Path,
) -> None:
    with Client(grid.target, Signer.generate()) as owner, Client(grid.target, Signer.generate()) as stranger:
        model = owner.upload(digits.model)
        job = owner.submit_noop(2)
        _finish_noop(grid.target, job.job_id, 2)
        done = owner.wait(job.job_id)
        assert done.state == JobState.SUCCEEDED and done.result is not None
        result = done.result
        queued = owner.submit_noop(1, device="cuda")  # no CUDA node: it stays open

        # the stranger: nothing listed, nothing found, nothing downloaded, nothing cancelled
        assert stranger.jobs() == []
        assert _code(lambda: stranger.jobs(owner.signer.address)) == grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: stranger.job(job.job_id)) == NOT_FOUND
        assert _code(lambda: list(stranger.watch(job.job_id))) == NOT_FOUND
        assert _code(lambda: stranger.download(result, tmp_path / "stolen")) == NOT_FOUND
        assert _code(lambda: stranger.download(model, tmp_path / "stolen")) == NOT_FOUND
        assert _code(lambda: stranger.cancel(queued.job_id)) == NOT_FOUND
        # the same answer as for a job that does not exist: existence is not revealed
        with pytest.raises(CoordinatorError) as missing:
            stranger.job("ab" * 32)
        with pytest.raises(CoordinatorError) as hidden:
            stranger.job(job.job_id)
        assert str(missing.value).replace("ab" * 32, "") == str(hidden.value).replace(job.job_id, "")
        # naming the owner's blobs in its own spec does not make them the stranger's
        with pytest.raises(CoordinatorError, match="not among your uploads") as e:
            stranger.submit(InferenceSpec(model=model, inputs=model, shard_rows=10))
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(CoordinatorError, match="not among your uploads"):  # nor in a dry run
            stranger.validate_job(InferenceSpec(model=model, inputs=model, shard_rows=10))
        # nor does announcing a blob's hash without its bytes
        stub = submit_pb2_grpc.SubmitterServiceStub(grpc.insecure_channel(grid.target))
        claim = [submit_pb2.UploadChunk(header=submit_pb2.UploadHeader(sha256=model.sha256, size=model.size))]
        with pytest.raises(grpc.RpcError):
            stub.UploadBlob(iter(claim), metadata=stranger.session_metadata())
        assert _code(lambda: stranger.download(model, tmp_path / "stolen")) == NOT_FOUND
        # a cancel signed by the stranger over the owner's session is refused too
        forged = sign_message(stranger.signer, cancel_message(queued.job_id))
        req = submit_pb2.CancelJobRequest(job_id=queued.job_id, signature=forged)
        with pytest.raises(grpc.RpcError) as err:
            stub.CancelJob(req, metadata=owner.session_metadata())
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # the owner is served as before: nothing was lost
        assert {j.job_id for j in owner.jobs()} == {job.job_id, queued.job_id}
        assert [e.kind for e in owner.watch(job.job_id)][-1] == "succeeded"
        assert owner.result(job.job_id, tmp_path / "result").stat().st_size == result.size
        assert owner.download(model, tmp_path / "model").read_bytes() == digits.model.read_bytes()
        assert owner.job(queued.job_id).state == JobState.QUEUED

    # the operator sees and may cancel every job
    with Client(grid.target, operator) as op:
        assert {job.job_id, queued.job_id} <= {j.job_id for j in op.jobs()}
        assert op.job(job.job_id).submitter == done.submitter
        assert op.download(result, tmp_path / "op-result").stat().st_size == result.size
        assert op.cancel(queued.job_id).state == JobState.CANCELLED


@SHARED
def test_calls_without_a_session_are_refused(grid: LocalGrid) -> None:
    with Client(grid.target, Signer.generate()) as owner:
        job = owner.submit_noop(1)
    stub = submit_pb2_grpc.SubmitterServiceStub(grpc.insecure_channel(grid.target))
    calls: dict[str, Callable[[Any], Any]] = {
        "GetJob": lambda md: stub.GetJob(submit_pb2.GetJobRequest(job_id=job.job_id), metadata=md),
        "ListJobs": lambda md: stub.ListJobs(submit_pb2.ListJobsRequest(), metadata=md),
        "CancelJob": lambda md: stub.CancelJob(submit_pb2.CancelJobRequest(job_id=job.job_id), metadata=md),
        "WatchJob": lambda md: list(stub.WatchJob(submit_pb2.WatchJobRequest(job_id=job.job_id), metadata=md)),
        "DownloadBlob": lambda md: list(
            stub.DownloadBlob(common_pb2.FetchBlobRequest(sha256=EMPTY.sha256), metadata=md)
        ),
        "UploadBlob": lambda md: stub.UploadBlob(
            iter([submit_pb2.UploadChunk(header=submit_pb2.UploadHeader(sha256=EMPTY.sha256, size=0))]), metadata=md
        ),
        "SubmitJob": lambda md: stub.SubmitJob(submit_pb2.SubmitJobRequest(spec_json=b"{}"), metadata=md),
    }
    for name, call in calls.items():
        for md in ((), ((SESSION_METADATA_KEY, "made-up"),)):
            with pytest.raises(grpc.RpcError) as e:
                call(md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert "session" in (e.value.details() or ""), name
    # public information needs no session: the same list of nodes as a session's
    listed = stub.ListNodes(submit_pb2.ListNodesRequest()).nodes
    with Client(grid.target, Signer.generate()) as viewer:
        assert [n.address for n in listed] == [n.address for n in viewer.nodes()]
    assert stub.GetEarnings(submit_pb2.GetEarningsRequest(address=Signer.generate().address)).cumulative_wei == "0"
    with pytest.raises(grpc.RpcError) as no_epoch:  # public too: no chain here, so no epoch
        stub.GetEpoch(submit_pb2.GetEpochRequest())
    assert no_epoch.value.code() == grpc.StatusCode.NOT_FOUND and "no epoch yet" in (no_epoch.value.details() or "")
    with Client(grid.target, owner.signer) as again:  # the owner, with a fresh session, still sees its job
        assert again.job(job.job_id).state == JobState.QUEUED
        again.session.token = "ended"  # as after a revocation: the SDK opens a new session, once, by itself
        assert again.job(job.job_id).job_id == job.job_id
        assert again.session.token != "ended"
        again.cancel(job.job_id)  # no open job left for a later test's nodes to lease


def test_repeated_failed_authentication_is_rate_limited(make_grid: Callable[..., LocalGrid]) -> None:
    grid = make_grid()
    grid.start_coordinator()
    with Client(grid.target, Signer.generate()) as honest:
        job = honest.submit_noop(1)  # a session opened before the attack
        stub = submit_pb2_grpc.SubmitterServiceStub(grpc.insecure_channel(grid.target))
        bad = ((SESSION_METADATA_KEY, "guess"),)
        codes, errors = [], []
        for _ in range(40):
            try:
                stub.ListJobs(submit_pb2.ListJobsRequest(), metadata=bad)
            except grpc.RpcError as err:
                codes.append(err.code())
                errors.append(err)
        last = errors[-1]
        assert codes[:30] == [grpc.StatusCode.UNAUTHENTICATED] * 30
        assert set(codes[30:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "retry after" in (last.details() or "")
        trailers = dict(last.trailing_metadata() or ())
        assert 0 < int(trailers["retry-after-ms"]) <= 60_000
        # opening a session from that address waits too, but a live session is still served
        with Client(grid.target, Signer.generate()) as newcomer, pytest.raises(CoordinatorError) as refused:
            newcomer.open_session()
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert honest.job(job.job_id).state == JobState.QUEUED


def test_uploads_past_each_quota_are_refused_and_lose_nothing(
    make_grid: Callable[..., LocalGrid],
    tmp_path: Path,
) -> None:
    mib = 1 << 20
    blobs = []
    for i in range(3):
        blobs.append(tmp_path / f"blob{i}.bin")
        blobs[-1].write_bytes(bytes([i + 1]) * (600 << 10))
    stored = make_grid("--quota-stored-gib", str(mib / (1 << 30)), "--quota-open-jobs", "1")
    stored.start_coordinator()
    daily = make_grid("--quota-daily-gib", str(mib / (1 << 30)))
    daily.start_coordinator()

    with Client(stored.target, Signer.generate()) as client, Client(stored.target, Signer.generate()) as other:
        first = client.upload(blobs[0])
        with pytest.raises(CoordinatorError, match="storage quota") as e:
            client.upload(blobs[1])
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "is left" in str(e.value)
        assert client.upload(blobs[0]) == first  # re-uploading one's own blob costs nothing
        assert client.download(first, tmp_path / "back").read_bytes() == blobs[0].read_bytes()
        assert other.upload(blobs[1]).size == 600 << 10  # another submitter has its own quota
        open_job = client.submit_noop(1, device="cuda")
        with pytest.raises(CoordinatorError, match="open jobs quota") as e:
            client.submit_noop(2, device="cuda")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        client.cancel(open_job.job_id)
        assert client.submit_noop(2, device="cuda").state == JobState.QUEUED
        assert client.job(open_job.job_id).state == JobState.CANCELLED

    with Client(daily.target, Signer.generate()) as client:
        first = client.upload(blobs[0])
        with pytest.raises(CoordinatorError, match="daily upload quota") as e:
            client.upload(blobs[1])
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "left until midnight UTC" in str(e.value)
        assert client.download(first, tmp_path / "back2").read_bytes() == blobs[0].read_bytes()
    assert list((daily.root / "coordinator" / "blobs" / "tmp").iterdir()) == []


@SHARED
def test_a_node_fetches_only_the_blobs_of_its_leases(
    grid: LocalGrid,
    digits: Assets,
    tmp_path: Path,
) -> None:
    private = tmp_path / "private.bin"
    private.write_bytes(b"the owner's secret" * 1000)
    with Client(grid.target, Signer.generate()) as owner:
        secret = owner.upload(private)
        job = owner.submit_inference(digits.model, digits.inputs, shard_rows=1000)
        assert job.tasks_total == 3

    async def fetch(node: NodeClient, ref: BlobRef) -> bytes:
        return b"".join([c async for c in node.fetch(ref)])

    async def scenario() -> None:
        one, two = NodeClient(grid.target, Signer.generate()), NodeClient(grid.target, Signer.generate())
        for n in (one, two):
            await n.register(CPU)
        (mine,), _ = await one.lease(1)
        (theirs,), _ = await two.lease(1)
        assert mine.model is not None
        assert hashlib.sha256(await fetch(one, mine.model)).hexdigest() == mine.model.sha256
        assert hashlib.sha256(await fetch(one, mine.input)).hexdigest() == mine.input.sha256
        for ref in (secret, theirs.input):  # a blob of no task, a task another node holds
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await fetch(one, ref)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "holds no lease" in (e.value.details() or "")
        await one.report(mine.task_id, mine.attempt, TaskError(ErrorKind.RELEASED, "giving it back"))
        with pytest.raises(grpc.aio.AioRpcError) as e:  # the lease is over: so is the access
            await fetch(one, mine.input)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert hashlib.sha256(await fetch(two, theirs.input)).hexdigest() == theirs.input.sha256
        for n in (one, two):
            await n.close()

    asyncio.run(scenario())
    with Client(grid.target, owner.signer) as again:  # no open job left for a later test's nodes to lease
        again.cancel(job.job_id)
