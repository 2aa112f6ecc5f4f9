"""Bad input over the real gRPC API: every case gets a clear error and loses nothing."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer, sign_message, sign_receipt, submit_message
from tensorgrid.errors import HashMismatch, SpecError, UnsafeFileError
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.spec import InferenceSpec, NoopSpec, canonical_json, spec_hash
from tensorgrid.types import BlobRef, Capabilities, JobState
from tensorgrid.v1 import submit_pb2, submit_pb2_grpc
from tests.integration.conftest import Assets, node_args
from tests.procs import REFEREE_ENTRY, children, loads_torch, running

pytestmark = pytest.mark.integration
SHARED = pytest.mark.xdist_group("bad_input")  # share one module grid per worker (see make_module_grid)
CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
LIMITS = ("--max-shard-mib", "0.25", "--max-blob-mib", "2")


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Callable[..., LocalGrid]) -> LocalGrid:
    g = make_module_grid(*LIMITS)
    g.start_coordinator()
    return g


@pytest.fixture
def grid(module_grid: LocalGrid) -> LocalGrid:
    """One coordinator for the tests that each check only their own calls and jobs."""
    module_grid.check_running()
    return module_grid


@pytest.fixture
def own_grid(make_grid: Callable[..., LocalGrid]) -> LocalGrid:
    """A coordinator of its own, for a test that counts every node's record or the blob store."""
    g = make_grid(*LIMITS)
    g.start_coordinator()
    return g


def raw_stub(target: str, signer: Signer | None = None) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """A bare SubmitterService stub and the metadata of a session opened for `signer` (a fresh key)."""
    with Client(target, signer or Signer.generate()) as client:
        md = client.session_metadata()
    return submit_pb2_grpc.SubmitterServiceStub(grpc.insecure_channel(target)), md


@SHARED
def test_malformed_spec_and_bad_signature(grid: LocalGrid) -> None:
    signer = Signer.generate()
    stub, md = raw_stub(grid.target, signer)
    raw = b'{"kind": "inference", "shard_rows": -1}'
    sig = sign_message(signer, submit_message(spec_hash(raw)))
    with pytest.raises(grpc.RpcError) as e:
        stub.SubmitJob(submit_pb2.SubmitJobRequest(spec_json=raw, submitter=signer.address, signature=sig), metadata=md)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec" in e.value.details()
    good = canonical_json(NoopSpec(tasks=1))
    forged = sign_message(Signer.generate(), submit_message(spec_hash(good)))
    with pytest.raises(grpc.RpcError) as e:
        req = submit_pb2.SubmitJobRequest(spec_json=good, submitter=signer.address, signature=forged)
        stub.SubmitJob(req, metadata=md)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


@SHARED
def test_sdk_refuses_bad_settings_before_uploading(grid: LocalGrid, digits: Assets) -> None:
    with Client(grid.target) as client, pytest.raises(SpecError, match="shard_rows"):
        client.submit_inference(digits.model, digits.inputs, shard_rows=0)


@SHARED
def test_unknown_blob_and_hash_mismatch(grid: LocalGrid, digits: Assets) -> None:
    with Client(grid.target) as client:
        spec = InferenceSpec(model=BlobRef("ab" * 32, 10), inputs=BlobRef("cd" * 32, 10))
        with pytest.raises(CoordinatorError, match="upload it first") as e:
            client.submit(spec)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    stub, md = raw_stub(grid.target)
    lie = [
        submit_pb2.UploadChunk(header=submit_pb2.UploadHeader(sha256=hashlib.sha256(b"x").hexdigest(), size=1)),
        submit_pb2.UploadChunk(data=b"y"),
    ]
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadBlob(iter(lie), metadata=md)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS


@SHARED
def test_oversize_shard_is_refused(grid: LocalGrid, digits: Assets) -> None:
    with Client(grid.target) as client, pytest.raises(CoordinatorError, match="lower shard_rows"):
        client.submit_inference(digits.model, digits.inputs, shard_rows=3000)


@SHARED
def test_pickled_model_and_inputs_are_refused(grid: LocalGrid, digits: Assets, tmp_path: Path) -> None:
    evil = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(64, 10), evil)
    pickled_inputs = tmp_path / "inputs.pkl"
    pickled_inputs.write_bytes(pickle.dumps({"x": [1, 2, 3]}))
    with Client(grid.target) as client:
        with pytest.raises(CoordinatorError, match="torch.export") as e:
            client.submit_inference(evil, digits.inputs, shard_rows=500)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(UnsafeFileError, match="pickle"):  # the SDK refuses before uploading
            client.submit_inference(digits.model, pickled_inputs, shard_rows=500)
        # a client that skips that check meets the coordinator's own
        spec = InferenceSpec(model=client.upload(digits.model), inputs=client.upload(pickled_inputs), shard_rows=500)
        with pytest.raises(CoordinatorError, match="pickle") as e:
            client.submit(spec)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def _noop_job(grid: LocalGrid, submitter: Signer, tasks: int = 2) -> str:
    with Client(grid.target, submitter) as client:
        return client.submit_noop(tasks).job_id


def test_forged_foreign_mismatched_and_replayed_results_are_rejected(own_grid: LocalGrid) -> None:
    submitter = Signer.generate()
    job_id = _noop_job(own_grid, submitter, tasks=3)
    empty = BlobRef(hashlib.sha256(b"").hexdigest(), 0)

    async def node() -> NodeClient:
        n = NodeClient(own_grid.target, Signer.generate())
        await n.register(CPU)
        return n

    async def scenario() -> None:
        forger, holder, thief, sloppy, honest = [await node() for _ in range(5)]
        (lease,), _ = await forger.lease(1)
        forged = sign_receipt(Signer.generate(), forger.domain, forger.sign(lease, empty))  # type: ignore[arg-type]
        ok, reason = await forger.submit(forged, 0, b"")
        assert not ok and "signature" in reason

        (lease,), _ = await holder.lease(1)
        ok, reason = await thief.submit(thief.sign(lease, empty), 0, b"")
        assert not ok and "does not hold" in reason
        ok, reason = await holder.submit(holder.sign(lease, empty), 0, b"")
        assert ok, reason
        ok, reason = await holder.submit(holder.sign(lease, empty), 0, b"")
        assert not ok and "lease is over" in reason  # the same receipt again: a replay

        (lease,), _ = await sloppy.lease(1)
        ok, reason = await sloppy.submit(sloppy.sign(lease, BlobRef("00" * 32, 1)), 1, b"x")
        assert not ok and "hash" in reason

        # nothing was lost: the rejected tasks went back to the pool, an honest node finishes them
        done = 0
        for _ in range(50):
            leases, _ = await honest.lease(3)
            for lz in leases:
                ok, reason = await honest.submit(honest.sign(lz, empty), 0, b"")
                assert ok, reason
                done += 1
            if done == 2:
                break
            await asyncio.sleep(0.2)
        assert done == 2
        for n in (forger, holder, thief, sloppy, honest):
            await n.close()

    asyncio.run(scenario())
    with Client(own_grid.target, submitter) as client:
        job = client.wait(job_id)
        assert job.state == JobState.SUCCEEDED and job.tasks_done == 3
        record = {n.address: n for n in client.nodes()}
    # forger, thief and sloppy each sent one bad result; the holder's replay of its own accepted
    # result was refused above but is not held against it (an honest node hands in a kept copy
    # when the answer was lost, e.g. with a dying replica); the honest node sent none
    assert sorted(n.rejections for n in record.values()) == [0, 0, 1, 1, 1]
    assert sorted(n.completed for n in record.values()) == [0, 0, 0, 1, 2]


@SHARED
def test_unauthenticated_node_calls_are_refused(grid: LocalGrid) -> None:
    async def scenario() -> None:
        node = NodeClient(grid.target, Signer.generate())
        node.token = "made-up"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await node.lease(1)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await node.close()

    asyncio.run(scenario())


@SHARED
def test_health_and_reflection(grid: LocalGrid) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(grid.target)
    health = health_pb2_grpc.HealthStub(channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service="tensorgrid.v1.NodeService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {
        "tensorgrid.v1.NodeService",
        "tensorgrid.v1.SubmitterService",
        "grpc.reflection.v1.ServerReflection",
    } <= names
    # reflection v1 (what current tools ask first) is the same messages under another package
    v1 = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    asks = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="tensorgrid.v1.SubmitterService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    ]
    listed, submit_file, own_file = list(v1(iter(asks)))
    assert names == {s.name for s in listed.list_services_response.service}
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in submit_file.file_descriptor_response.file_descriptor_proto
    ]
    assert "tensorgrid/v1/submit.proto" in {f.name for f in files}
    (v1_file,) = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in own_file.file_descriptor_response.file_descriptor_proto
    ]
    assert v1_file.package == "grpc.reflection.v1" and v1_file.service[0].name == "ServerReflection"


@SHARED
def test_malformed_addresses_are_invalid_arguments(grid: LocalGrid) -> None:
    """A field that is no address is the caller's mistake (INVALID_ARGUMENT), not a failed login."""
    stub = submit_pb2_grpc.SubmitterServiceStub(grpc.insecure_channel(grid.target))
    calls = {
        "GetEarnings": lambda: stub.GetEarnings(submit_pb2.GetEarningsRequest(address="0x1234")),
        "GetChallenge": lambda: stub.GetChallenge(submit_pb2.SessionChallengeRequest(address="not an address")),
        "OpenSession": lambda: stub.OpenSession(submit_pb2.OpenSessionRequest(address="0xzz", nonce=b"n" * 40)),
    }
    for name, make_call in calls.items():
        with pytest.raises(grpc.RpcError) as e:
            make_call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "not an Ethereum address" in e.value.details(), name


def test_a_finished_job_cannot_be_cancelled(own_grid: LocalGrid) -> None:
    with Client(own_grid.target) as client:
        job = client.submit_noop(1)
        client.cancel(job.job_id)
        assert client.cancel(job.job_id).state == JobState.CANCELLED  # a retried cancel is harmless
        node = own_grid.start_node("n1", *node_args())
        done = client.submit_noop(1)
        assert client.wait(done.job_id).state == JobState.SUCCEEDED
        # Noop jobs need no torch: the node's worker never imported it, the coordinator started no referee.
        workers = children(node.popen.pid)
        assert workers and not any(loads_torch(pid) for pid in workers), workers
        assert not running(own_grid.coordinator().popen.pid, REFEREE_ENTRY)
        with pytest.raises(CoordinatorError) as e:
            client.cancel(done.job_id)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "already succeeded" in str(e.value)
        assert client.job(done.job_id).state == JobState.SUCCEEDED


@SHARED
def test_cancel_only_by_submitter(grid: LocalGrid) -> None:
    with Client(grid.target) as owner, Client(grid.target) as stranger:
        job = owner.submit_noop(3)
        with pytest.raises(CoordinatorError) as e:
            stranger.cancel(job.job_id)
        assert e.value.code == grpc.StatusCode.NOT_FOUND  # another's job is not revealed
        assert owner.cancel(job.job_id).state == JobState.CANCELLED
        assert [ev.kind for ev in owner.watch(job.job_id)][-1] == "cancelled"


def test_oversize_uploads_are_refused_and_leave_nothing(own_grid: LocalGrid, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01" * (3 << 20))
    with Client(own_grid.target) as client, pytest.raises(CoordinatorError, match="over the limit") as e:
        client.upload(big)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    stub, md = raw_stub(own_grid.target)
    # a size that lies low, then more bytes than announced
    small = [
        submit_pb2.UploadChunk(header=submit_pb2.UploadHeader(sha256="ab" * 32, size=10)),
        submit_pb2.UploadChunk(data=b"z" * 11),
    ]
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadBlob(iter(small), metadata=md)
    assert "more than" in err.value.details()
    # one message over gRPC's per-message limit
    huge = [
        submit_pb2.UploadChunk(header=submit_pb2.UploadHeader(sha256="cd" * 32, size=1 << 20)),
        submit_pb2.UploadChunk(data=b"y" * (9 << 20)),
    ]
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadBlob(iter(huge), metadata=md)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    leftovers = list((own_grid.root / "coordinator" / "blobs" / "tmp").iterdir())
    assert leftovers == []


def test_hash_announced_after_the_bytes_is_checked(grid: LocalGrid, tmp_path: Path) -> None:
    stub, md = raw_stub(grid.target)

    def upload(*parts: submit_pb2.UploadChunk) -> submit_pb2.UploadChunk:
        return stub.UploadBlob(iter(parts), metadata=md)

    def header(sha: str, size: int) -> submit_pb2.UploadChunk:
        return submit_pb2.UploadChunk(header=submit_pb2.UploadHeader(sha256=sha, size=size))

    data = submit_pb2.UploadChunk(data=b"late hash")
    good = hashlib.sha256(b"late hash").hexdigest()
    with pytest.raises(grpc.RpcError) as err:  # a late hash that lies (of a blob not stored yet)
        upload(header("", 9), submit_pb2.UploadChunk(data=b"late lies"), header(good, 9))
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert upload(header("", 9), data, header(good, 9)).sha256 == good
    with pytest.raises(grpc.RpcError) as err:  # no hash at all
        upload(header("", 9), data)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # a late hash with another size
        upload(header("", 9), data, header(good, 10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # a blob the sender already uploaded: the upload ends when its hash arrives, the rest is never read
    part, rest = submit_pb2.UploadChunk(data=b"late"), submit_pb2.UploadChunk(data=b"\0" * 100)
    assert upload(header("", 9), part, header(good, 9), rest).sha256 == good
    assert list((grid.root / "coordinator" / "blobs" / "tmp").iterdir()) == []


def test_sdk_download_resumes_and_checks_the_whole_blob(grid: LocalGrid, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 6000)
    dest = tmp_path / "copy.bin"
    with Client(grid.target) as client:
        ref = client.upload(blob)
        (tmp_path / "copy.bin.part").write_bytes(blob.read_bytes()[:500_000])
        assert client.download(ref, dest).read_bytes() == blob.read_bytes()
        dest.unlink()
        (tmp_path / "copy.bin.part").write_bytes(b"\0" * 500_000)  # a partial of other bytes
        with pytest.raises(HashMismatch):
            client.download(ref, dest)
        assert not dest.exists() and not (tmp_path / "copy.bin.part").exists()
        assert client.download(ref, dest).read_bytes() == blob.read_bytes()
