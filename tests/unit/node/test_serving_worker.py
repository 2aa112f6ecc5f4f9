"""node.serving's worker, through the real sandboxed child: frames, batching across requests,
hostile requests failing alone, streamed generation, limits, and signed batch receipts."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from node.child import WorkerChild
from node.serving.frames import FrameError, encode, read_frame
from node.serving.process import ReplicaLoad, ServingProcess
from node.serving.replica import SIGN_IDLE_S, Replica, ReplicaContext
from tensorgrid import serde
from tensorgrid.crypto import Signer, sign_receipt, verify_receipt
from tensorgrid.sandbox import Isolation
from tensorgrid.serving import batch_receipt, tensors_from_bytes, tensors_to_bytes
from tensorgrid.types import BlobRef, Domain, ErrorKind, TaskError
from tensorgrid.v1 import common_pb2, serving_pb2
from tensorgrid.workloads.generation import DecodeSettings, run_generation
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.decoders import export_decoder, tiny_decoder

DOMAIN = Domain("TensorGrid", "1", 31337, "0x" + "11" * 20)
TINY_MEMORY_LIMIT = 4 << 30  # generous: the tiny replica never nears it, unless a test says it did


def test_frames_round_trip_and_refuse_garbage() -> None:
    stream = io.BytesIO(encode({"op": "x"}, [b"ab", b"", b"\x00" * 5]) + encode({"op": "y"}))
    assert read_frame(stream) == ({"op": "x", "sizes": [2, 0, 5]}, [b"ab", b"", b"\x00" * 5])
    assert read_frame(stream) == ({"op": "y"}, [])
    assert read_frame(stream) is None
    for bad in (b"\x00\x00", (3).to_bytes(4, "big") + b"[1]", encode({"sizes": [9]}, [])[:-1] + b"]ab"):
        with pytest.raises(FrameError):
            read_frame(io.BytesIO(bad))


@pytest.fixture(scope="module")
def tiny(loop: asyncio.AbstractEventLoop, models: dict[str, Path]) -> Iterator[ServingProcess]:
    load = ReplicaLoad(str(models["tiny"]), "inference", {"input_names": ["x"]}, device="cpu", threads=1,
                       memory_limit_bytes=TINY_MEMORY_LIMIT)  # fmt: skip
    proc = ServingProcess(load)
    assert loop.run_until_complete(proc.ready()) is None
    yield proc
    loop.run_until_complete(proc.close())


def _x(rows: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> bytes:
    return tensors_to_bytes({"x": torch.randn(rows, 4, generator=torch.Generator().manual_seed(seed)).to(dtype)})


def test_a_batch_runs_once_and_splits_back_by_rows(
    loop: asyncio.AbstractEventLoop, tiny: ServingProcess, models: dict[str, Path]
) -> None:
    requests = [_x(1, seed=1), _x(3, seed=2), _x(2, seed=3)]
    answers = loop.run_until_complete(tiny.run_batch(requests))
    module = load_program(models["tiny"])
    for request, answer in zip(requests, answers, strict=True):
        assert isinstance(answer, bytes), answer
        got = tensors_from_bytes(answer)
        assert sorted(got) == ["output"]
        with torch.no_grad():
            want = module(tensors_from_bytes(request)["x"])
        torch.testing.assert_close(got["output"], want)
    again = loop.run_until_complete(tiny.run_batch(requests))
    assert again == answers  # deterministic bytes


def test_hostile_requests_fail_alone(loop: asyncio.AbstractEventLoop, tiny: ServingProcess) -> None:
    good = _x(2)
    oversize = (2**40).to_bytes(8, "little") + b"{}"  # a header length far past the limit
    requests = [
        b"\x80\x04\x95" + b"pickle" * 10,  # a pickle
        good[:30],  # a truncated header
        oversize,
        tensors_to_bytes({"y": torch.zeros(2, 4)}),  # the wrong input name
        _x(2, dtype=torch.float64),  # cannot join the others, and the program refuses it
        good,
    ]
    answers = loop.run_until_complete(tiny.run_batch(requests))
    kinds = [a.kind if isinstance(a, TaskError) else "ok" for a in answers]
    assert kinds[0] == ErrorKind.UNSAFE_INPUT
    assert kinds[1] in (ErrorKind.INVALID_INPUT, ErrorKind.UNSAFE_INPUT)
    assert kinds[2] == ErrorKind.UNSAFE_INPUT
    assert kinds[3] == ErrorKind.INVALID_INPUT
    assert kinds[4] in (ErrorKind.PROGRAM_ERROR, ErrorKind.INVALID_INPUT)
    assert kinds[5] == "ok"
    assert loop.run_until_complete(tiny.run_batch([good])) == [answers[5]]  # its neighbours changed nothing


def test_a_batch_over_its_time_limit_fails_and_the_child_is_replaced(
    loop: asyncio.AbstractEventLoop, models: dict[str, Path]
) -> None:
    proc = ServingProcess(ReplicaLoad(str(models["slow"]), "inference", {}, device="cpu", threads=1, time_limit_s=0.5))
    try:
        assert loop.run_until_complete(proc.ready()) is None
        first = proc.pid
        x = tensors_to_bytes({"x": torch.randn(1024, 1024)})
        answers = loop.run_until_complete(proc.run_batch([x, x]))
        assert [a.kind for a in answers if isinstance(a, TaskError)] == [ErrorKind.TIMEOUT] * 2
        assert loop.run_until_complete(proc.ready()) is None  # a fresh child, the program loaded again
        assert proc.pid is not None and proc.pid != first
    finally:
        loop.run_until_complete(proc.close())


def test_the_memory_peak_is_reset_once_per_child_and_a_batch_over_the_limit_still_fails(
    loop: asyncio.AbstractEventLoop, tiny: ServingProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VmHWM is reset after a child's load, not before every batch: a batch over the limit
    kills its child, so a live child's peak passes the limit exactly when its running batch does."""
    resets: list[int] = []
    real_reset = WorkerChild.reset_peak
    monkeypatch.setattr(WorkerChild, "reset_peak", lambda child: (resets.append(child.pid), real_reset(child))[1])
    for seed in range(3):
        assert isinstance(loop.run_until_complete(tiny.run_batch([_x(1, seed=seed)]))[0], bytes)
    first = tiny.pid
    assert len(resets) <= 1 and set(resets) <= {first}  # at most once: the fixture's child may be fresh
    monkeypatch.setattr(WorkerChild, "peak_rss", lambda child: TINY_MEMORY_LIMIT + 1)
    (answer,) = loop.run_until_complete(tiny.run_batch([_x(1)]))
    assert isinstance(answer, TaskError) and answer.kind is ErrorKind.OUT_OF_MEMORY
    monkeypatch.undo()
    monkeypatch.setattr(WorkerChild, "reset_peak", lambda child: (resets.append(child.pid), real_reset(child))[1])
    resets.clear()
    for seed in range(2):
        assert isinstance(loop.run_until_complete(tiny.run_batch([_x(1, seed=seed)]))[0], bytes)
    assert tiny.pid != first and resets == [tiny.pid]  # the fresh child's load peak is not a batch's


def test_a_program_that_does_not_load_is_reported(loop: asyncio.AbstractEventLoop, models: dict[str, Path]) -> None:
    proc = ServingProcess(ReplicaLoad(str(models["garbage"]), "inference", {}, device="cpu", threads=1))
    try:
        error = loop.run_until_complete(proc.ready())
        assert error is not None and error.kind in (ErrorKind.INVALID_INPUT, ErrorKind.UNSAFE_INPUT), error
    finally:
        loop.run_until_complete(proc.close())


def test_generation_streams_the_tokens_run_generation_makes(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    export_decoder(tiny_decoder(), tmp_path / "decoder.pt2")
    decode = DecodeSettings(max_new_tokens=7, vocab_size=50, temperature=1.0, top_k=8, seed=0)
    settings = {"input_names": [], "generation": {**decode.to_dict(), "seed": 0}}
    proc = ServingProcess(ReplicaLoad(str(tmp_path / "decoder.pt2"), "generation", settings, device="cpu", threads=1))
    prompt = torch.tensor([5, 17, 3, 9])
    try:
        assert loop.run_until_complete(proc.ready()) is None
        steps: list[list[int]] = []

        async def on_tokens(tokens: list[int]) -> None:
            steps.append(tokens)

        output = loop.run_until_complete(proc.generate(tensors_to_bytes({"tokens": prompt}), 7, on_tokens))
    finally:
        loop.run_until_complete(proc.close())
    assert isinstance(output, bytes), output
    save_tensors({"tokens": prompt[None, :], "lengths": torch.tensor([4])}, tmp_path / "prompt.safetensors")
    local = DecodeSettings.from_dict({**decode.to_dict(), "seed": 7})
    run_generation(tmp_path / "decoder.pt2", tmp_path / "prompt.safetensors", tmp_path / "want", local, device="cpu")
    want, got = load_tensors(tmp_path / "want"), tensors_from_bytes(output)
    n = int(want["lengths"][0])
    assert all(len(s) == 1 for s in steps) and [s[0] for s in steps] == want["tokens"][0, :n].tolist()
    assert torch.equal(got["tokens"], want["tokens"]) and torch.equal(got["lengths"], want["lengths"])


def test_a_replica_answers_first_and_signs_each_batch_receipt_off_the_requests_path(
    loop: asyncio.AbstractEventLoop, models: dict[str, Path]
) -> None:
    """One receipt per micro-batch, signed only after its replies are sent: when the Serve loop
    says they are written, SIGN_IDLE_S after the answer at the latest, or on release."""
    signer = Signer.generate()
    sent: list[serving_pb2.ServeUp] = []
    model = models["tiny"]

    async def fetch(ref: BlobRef) -> Path:
        return model

    ctx = ReplicaContext(fetch, lambda r: sign_receipt(signer, DOMAIN, r), sent.append, device="cpu", threads=1)
    assign = serving_pb2.ReplicaAssign(
        endpoint_id="ab" * 32,
        replica_id="cd" * 32,
        serves="inference",
        model=common_pb2.BlobRef(sha256="ee" * 32, size=model.stat().st_size),
        settings_json=json.dumps({"input_names": ["x"]}).encode(),
        max_batch=8,
        max_delay_us=0,
    )
    replica = Replica(assign, ctx)

    def kinds() -> list[str]:
        return [m.WhichOneof("msg") or ("reply" if m.replies else "receipt") for m in sent]

    async def scenario() -> None:
        assert await replica.start()
        replica.batcher.close()  # run batches by hand: deterministic composition
        await replica._loop  # type: ignore[misc]
        from node.serving.batcher import Pending

        await replica._run([Pending(1, _x(2)), Pending(2, b"garbage"), Pending(3, _x(1, seed=4))])
        assert kinds() == ["state", "reply", "reply", "reply"]  # answered; nothing signed in their way
        replica.sign_receipts()  # as the Serve loop does once the replies are written
        assert kinds() == ["state", "reply", "reply", "reply", "receipt"]
        await replica._run([Pending(4, _x(1, seed=5))])
        assert kinds()[-1] == "reply"
        await asyncio.sleep(SIGN_IDLE_S * 4)  # nobody said the replies were written: signed anyway
        assert kinds()[-1] == "receipt" and sent[-1].receipts[0].batch == 2
        await replica._run([Pending(5, _x(1, seed=6))])
        await replica.close()  # released before SIGN_IDLE_S: batch 3's receipt goes now, not never

    loop.run_until_complete(scenario())
    assert kinds() == ["state", "reply", "reply", "reply", "receipt", "reply", "receipt", "reply", "receipt"]
    assert [m.receipts[0].batch for m in sent if m.receipts] == [1, 2, 3]
    assert sent[0].state.ready and sent[0].state.replica_id == "cd" * 32
    replies = [m.replies[0] for m in sent[1:4]]
    assert [r.request_id for r in replies] == [1, 2, 3] and all(r.done and r.batch == 1 for r in replies)
    assert replies[1].HasField("error") and not replies[1].output and replies[0].output and replies[2].output
    receipt = serde.receipt_from_pb(sent[4].receipts[0].receipt)
    assert list(sent[4].receipts[0].request_ids) == [1, 2, 3] and sent[4].receipts[0].batch == 1
    verify_receipt(DOMAIN, receipt, signer.address)
    want = batch_receipt(
        "ab" * 32,
        "cd" * 32,
        1,
        [1, 2, 3],
        [_x(2), b"garbage", _x(1, seed=4)],
        [replies[0].output, b"", replies[2].output],
    )
    assert (receipt.task_id, receipt.input_hash, receipt.output_hash, receipt.commitment) == (
        want.task_id,
        want.input_hash,
        want.output_hash,
        want.commitment,
    )
    assert list(sent[6].receipts[0].request_ids) == [4]
    verify_receipt(DOMAIN, serde.receipt_from_pb(sent[6].receipts[0].receipt), signer.address)


def test_a_replica_released_while_it_starts_leaves_no_worker_behind(
    loop: asyncio.AbstractEventLoop, models: dict[str, Path]
) -> None:
    """A release can come while the model is still being fetched: no child may outlive it."""
    fetched = asyncio.Event()
    sent: list[serving_pb2.ServeUp] = []

    async def slow_fetch(ref: BlobRef) -> Path:
        await fetched.wait()
        return models["tiny"]

    ctx = ReplicaContext(slow_fetch, lambda r: r, sent.append, device="cpu", threads=1)
    assign = serving_pb2.ReplicaAssign(
        endpoint_id="ab" * 32, replica_id="cd" * 32, serves="inference", model=common_pb2.BlobRef(sha256="ee" * 32)
    )
    replica = Replica(assign, ctx)

    async def scenario() -> None:
        starting = asyncio.ensure_future(replica.start())
        await asyncio.sleep(0.05)
        await replica.close("released")
        fetched.set()
        assert await starting is False
        assert replica.process is None or replica.process.pid is None  # nothing was spawned, or it is gone
        assert not any(m.state.ready for m in sent)

    loop.run_until_complete(scenario())


def test_a_broken_streams_replica_stays_warm_for_the_next_stream_of_its_endpoint_only(
    loop: asyncio.AbstractEventLoop, models: dict[str, Path]
) -> None:
    """The coordinator replica died: the idle replica's loaded child is parked, named in the next
    hello, and adopted by the next replica of the same endpoint (same child, no new start); a
    drain stops whatever is still parked."""
    from node.serving.stream import ServeLoop

    sent: list[serving_pb2.ServeUp] = []

    async def fetch(ref: BlobRef) -> Path:
        return models["tiny"]

    serve = ServeLoop(
        None,  # type: ignore[arg-type]
        2,
        lambda send: ReplicaContext(fetch, lambda r: r, sent.append, device="cpu", threads=1),
        asyncio.Event(),
        asyncio.Event(),
    )

    def assign(endpoint: str, replica: str) -> serving_pb2.ReplicaAssign:
        return serving_pb2.ReplicaAssign(
            endpoint_id=endpoint,
            replica_id=replica,
            serves="inference",
            model=common_pb2.BlobRef(sha256="ee" * 32, size=models["tiny"].stat().st_size),
            settings_json=json.dumps({"input_names": ["x"]}).encode(),
            max_batch=8,
        )

    async def started(a: serving_pb2.ReplicaAssign) -> Replica:
        serve._assign(a)
        replica = serve.replicas[a.replica_id]
        for _ in range(600):
            if replica._loop is not None:
                return replica
            await asyncio.sleep(0.05)
        raise AssertionError("the replica did not start")

    async def scenario() -> None:
        first = await started(assign("ab" * 32, "01" * 32))
        assert first.process is not None
        pid = first.process.pid
        await serve._drop_all("the serve stream closed", keep=True)
        assert [k[0] for k in serve._parked] == ["ab" * 32]
        other = await started(assign("cd" * 32, "02" * 32))  # another endpoint: a child of its own
        assert other.process is not None and other.process.pid != pid
        again = await started(assign("ab" * 32, "03" * 32))  # same endpoint, on the next stream
        assert again.process is not None and again.process.pid == pid and not serve._parked
        await serve._drop_all("the serve stream closed", keep=True)
        assert len(serve._parked) == 2
        parked = [process for process, _ in serve._parked.values()]
        await serve._drop_all("the node is draining")
        assert not serve._parked and all(p.pid is None for p in parked)

    loop.run_until_complete(asyncio.wait_for(scenario(), 120))


def test_a_lending_replica_reads_its_program_only_while_it_loads(
    loop: asyncio.AbstractEventLoop, models: dict[str, Path], tmp_path: Path
) -> None:
    """The daemon's replicas (lend=True, no directory of the node's in their isolation): the
    program's file is lent for the load alone; the loaded child answers without it."""
    load = ReplicaLoad(str(models["tiny"]), "inference", {"input_names": ["x"]}, device="cpu", threads=1)
    proc = ServingProcess(load, lend=True, isolation=Isolation(), scratch_root=tmp_path)
    try:
        assert loop.run_until_complete(proc.ready()) is None
        assert len(list(tmp_path.glob("lent-*"))) == 1 and list(tmp_path.glob("lent-*/*")) == []  # taken back
        [answer] = loop.run_until_complete(proc.run_batch([_x(2)]))
        assert isinstance(answer, bytes) and tensors_from_bytes(answer)["output"].shape == (2, 3), answer
    finally:
        loop.run_until_complete(proc.close())
    assert list(tmp_path.iterdir()) == []
