"""One replica on this node: an endpoint's program warm in a sandboxed child, fed micro-batches.

The agent's side of ReplicaAssign: fetch the model into the blob cache, start the child and
load the program, then say ReplicaState{ready} (or {ready: false, error}: the replica is
gone). Requests go through the replica's Batcher; after each micro-batch every request gets
its ServeReply (the output, or a TaskError with done = true), then the batch gets ONE
BatchReceipt signed here, in the agent (the child holds no key), over the inputs as received
and the outputs as sent (b"" for a failed request), in the batch's request order. It is
signed off the requests' path: once the stream has written the batch's replies (the Serve
loop calls sign_receipts), SIGN_IDLE_S after the answer at the latest, or on release.

Generation runs one prompt per micro-batch (each request has its own seed): a ServeReply per
decoding step with its tokens, the last with done = true and the output, then the receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from node.serving.batcher import Batcher, Pending, Policy
from node.serving.process import ReplicaLoad, ServingProcess
from tensorgrid import serde
from tensorgrid.serving import batch_receipt, digest_receipt, trace
from tensorgrid.serving.datalink import DIRECT_BATCH_BASE, open_link
from tensorgrid.types import BlobRef, ErrorKind, Receipt, TaskError
from tensorgrid.v1 import serving_pb2

__all__ = ["Replica", "ReplicaContext"]

log = logging.getLogger("tensorgrid.node.serving")
WORKER_HOPS = ("w.read", "w.run", "w.ran", "w.sent")  # the stamps of a data link batch (direct.py)
SIGN_IDLE_S = 0.005  # an answered batch's receipt is signed this long after at the latest

Send = Callable[[serving_pb2.ServeUp], None]


class ReplicaContext:
    """What a replica takes from its agent: how to fetch a blob, sign a receipt, start a child."""

    def __init__(
        self,
        fetch: Callable[[BlobRef], Awaitable[Path]],
        sign: Callable[[Receipt], Receipt],
        send: Send,
        device: str = "auto",
        threads: int = 0,
        **executor: object,
    ) -> None:
        """executor: node.executor.Executor keywords for the child (isolation, scratch_root, …)."""
        self.fetch, self.sign, self.send = fetch, sign, send
        self.device, self.threads = device, threads
        self.executor = executor
        self.data_host = ""  # the coordinator's host, for a replica offered its data port


def reply(request_id: int, batch: int, *, output: bytes = b"", error: TaskError | None = None) -> serving_pb2.ServeUp:
    """A final ServeReply (done): the output, or the error."""
    msg = serving_pb2.ServeReply(request_id=request_id, output=output, done=True, batch=batch)
    if error is not None:
        msg.error.CopyFrom(serde.error_to_pb(error))
    return serving_pb2.ServeUp(replies=[msg])


class Replica:
    """One assigned endpoint replica: start(), submit()/cancel() requests, close()."""

    def __init__(self, assign: serving_pb2.ReplicaAssign, ctx: ReplicaContext) -> None:
        self.assign = assign
        self.replica_id = assign.replica_id
        self.ctx = ctx
        self.generation = assign.serves == "generation"
        # A generation request has its own seed: one prompt per micro-batch.
        policy = Policy(max_batch=1 if self.generation else max(1, assign.max_batch), max_delay_us=assign.max_delay_us)
        self.batcher = Batcher(policy, self._run, self._expired)
        self.batches = 0  # the last micro-batch's sequence number (the first is 1)
        self.process: ServingProcess | None = None
        self._loop: asyncio.Task[None] | None = None
        self._closed = False  # released: a start still under way spawns nothing more
        # answered micro-batches whose receipts are not signed yet (sign_receipts): sequence,
        # request ids, and how to make the unsigned receipt (hashing is off the answer's path)
        self._unsigned: list[tuple[int, list[int], Callable[[], Receipt]]] = []
        self._link: asyncio.Task[None] | None = None  # opening the data link (node.serving.datalink)
        self._sign_timer: asyncio.TimerHandle | None = None
        self.warm: ServingProcess | None = None  # a broken stream's child of this endpoint, to adopt

    @property
    def warm_key(self) -> tuple[object, ...]:
        """What a warm child must have loaded to serve this replica: the same endpoint (never
        another's: a child may keep state between batches), program, settings and limits."""
        a = self.assign
        return (a.endpoint_id, a.model.sha256, a.serves, a.settings_json, a.memory_limit_bytes, a.time_limit_ms)

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> bool:
        """Fetch, start, load; send ReplicaState. True when ready."""
        error = await self._prepare()
        if self._closed:  # released while starting: whatever started goes too, nothing is ready
            await self.close()
            return False
        state = serving_pb2.ReplicaState(replica_id=self.replica_id, ready=error is None)
        if error is not None:
            log.warning(
                "replica %s of %s failed: %s", self.replica_id[:12], self.assign.endpoint_id[:12], error.message
            )
            state.error.CopyFrom(serde.error_to_pb(error))
            await self.close()
        else:
            log.info("replica %s of endpoint %s ready", self.replica_id[:12], self.assign.endpoint_id[:12])
            self._loop = asyncio.create_task(self.batcher.run())
            if self.assign.data_port and self.assign.data_token and self.ctx.data_host:
                self._link = asyncio.create_task(self._open_link())
        self.ctx.send(serving_pb2.ServeUp(state=state))
        return error is None

    async def _prepare(self) -> TaskError | None:
        a = self.assign
        model = serde.blob_from_pb(a.model)
        if model is None:
            return TaskError(ErrorKind.INVALID_INPUT, "the assignment names no model")
        try:
            settings = json.loads(a.settings_json or b"{}")
            if not isinstance(settings, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return TaskError(ErrorKind.INVALID_INPUT, f"bad replica settings: {exc}")
        try:
            path = await self.ctx.fetch(model)
        except Exception as exc:  # the coordinator's blob store, the cache: reported, not fatal
            return TaskError(ErrorKind.BLOB_UNAVAILABLE, f"could not fetch the model: {exc}")
        if self._closed:  # released during the fetch: no child for a replica nobody holds
            return TaskError(ErrorKind.RELEASED, "released while starting")
        load = ReplicaLoad(
            model_path=str(path),
            serves=a.serves,
            settings=settings,
            device=self.ctx.device,
            threads=self.ctx.threads,
            memory_limit_bytes=a.memory_limit_bytes,
            time_limit_s=a.time_limit_ms / 1000,
        )
        if self.warm is not None and self.warm.load == load:  # ready at once (or loads again if it died)
            self.process, self.warm = self.warm, None
        else:
            self.process = ServingProcess(load, **self.ctx.executor)  # type: ignore[arg-type]
        return await self.process.ready()

    async def close(self, reason: str = "the replica was released", *, keep: bool = False) -> ServingProcess | None:
        """Stop batching and the child; requests not yet answered fail as RELEASED. keep: hand the
        child back instead, still loaded, if it is idle (the stream broke: another coordinator
        replica may place this endpoint here again, node.serving.stream)."""
        self._closed = True
        if self._link is not None:
            self._link.cancel()
        self.sign_receipts()  # what was answered is owed its receipt
        idle = self._loop is not None and not self.batcher.running  # ready, and no batch in the child
        error = TaskError(ErrorKind.RELEASED, reason)
        for p in [*self.batcher.close(), *self.batcher.running]:
            self.ctx.send(reply(p.request_id, 0, error=error))
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self.warm is not None:  # offered, never adopted (released while starting)
            await self.warm.close()
            self.warm = None
        if self.process is not None:
            if keep and idle:
                process, self.process = self.process, None
                return process
            await self.process.close()
        return None

    # ---- requests -------------------------------------------------------------------------------
    def submit(self, request: serving_pb2.ServeRequest) -> None:
        self.batcher.submit(Pending(request.request_id, request.input, request.deadline_ms, request.seed))

    def cancel(self, request_id: int) -> bool:
        return self.batcher.cancel(request_id)

    def _expired(self, p: Pending) -> None:
        # batch 0: it ran in no micro-batch (and no receipt covers it)
        self.ctx.send(reply(p.request_id, 0, error=TaskError(ErrorKind.TIMEOUT, "past its deadline before it ran")))

    async def _run(self, batch: list[Pending]) -> None:
        assert self.process is not None
        self.batches += 1
        seq = self.batches
        if self.generation:
            outputs = [await self._generate(batch[0], seq)]
        else:
            answers = await self.process.run_batch([p.payload for p in batch])
            outputs = []
            for p, answer in zip(batch, answers, strict=True):
                if isinstance(answer, bytes):
                    self.ctx.send(reply(p.request_id, seq, output=answer))
                    outputs.append(answer)
                else:
                    self.ctx.send(reply(p.request_id, seq, error=answer))
                    outputs.append(b"")
        self.batcher.running = []  # answered: a release from here on owes them nothing
        ids = [p.request_id for p in batch]
        a = self.assign
        inputs = [p.payload for p in batch]
        self._answered(seq, ids, lambda: batch_receipt(a.endpoint_id, self.replica_id, seq, ids, inputs, outputs))

    def _answered(self, seq: int, ids: list[int], unsigned: Callable[[], Receipt]) -> None:
        self._unsigned.append((seq, ids, unsigned))
        if self._sign_timer is None:
            self._sign_timer = asyncio.get_running_loop().call_later(SIGN_IDLE_S, self.sign_receipts)

    # ---- the data link ------------------------------------------------------------------------
    async def _open_link(self) -> None:
        """Connect to the coordinator's data port for this replica and hand the connection to
        the warm child; on any failure the Serve stream goes on carrying the requests."""
        a = self.assign
        try:
            sock = await asyncio.to_thread(open_link, self.ctx.data_host, a.data_port, self.replica_id, a.data_token)
        except OSError as e:
            log.warning("replica %s: no data link (%s); requests keep to the Serve stream", self.replica_id[:12], e)
            return
        try:
            if self.process is not None and await self.process.attach_data(
                sock, self._direct_batch, self.batcher.policy.max_batch
            ):
                log.info("replica %s: requests come down its data link", self.replica_id[:12])
        finally:
            sock.close()  # the child holds its own copy (or the link closes and its calls fail over)

    def _direct_batch(self, header: dict[str, object]) -> None:
        """A micro-batch the child answered on its data link: its receipt, from its digests."""
        seq, ids, din, dout = header.get("batch"), header.get("ids"), header.get("in"), header.get("out")
        if not (
            isinstance(seq, int)
            and seq > DIRECT_BATCH_BASE
            and isinstance(ids, list)
            and ids
            and all(isinstance(i, int) and i > 0 for i in ids)
            and isinstance(din, str)
            and isinstance(dout, str)
        ):
            log.warning("replica %s: its worker reported a malformed batch; not receipted", self.replica_id[:12])
            return
        a = self.assign
        self._answered(seq, ids, lambda: digest_receipt(a.endpoint_id, self.replica_id, seq, ids, din, dout))
        stamps = header.get("t")
        if trace.enabled() and isinstance(stamps, list) and len(stamps) == len(WORKER_HOPS):
            for i in ids:  # the worker's own word, written to the trace only
                for hop, t in zip(WORKER_HOPS, stamps, strict=True):
                    if isinstance(t, int):
                        trace.stamp(hop, f"{self.replica_id[:8]}:{i}", t)
            trace.stamp("a.digests", len(ids))

    def sign_receipts(self) -> None:
        """Sign the receipts of the micro-batches answered since the last call and queue them up
        the stream. Never between a request and its answer, where hashing and signing would add
        ~0.15 ms: the Serve loop calls it once their replies are written (else SIGN_IDLE_S after
        the answer, or on close)."""
        if self._sign_timer is not None:
            self._sign_timer.cancel()
            self._sign_timer = None
        answered, self._unsigned = self._unsigned, []
        started = time.perf_counter_ns()
        for seq, ids, unsigned in answered:
            try:
                signed = self.ctx.sign(unsigned())
            except Exception:  # that batch goes unpaid; the replica serves on
                log.exception("could not sign the receipt of batch %d of replica %s", seq, self.replica_id[:12])
                continue
            receipt = serving_pb2.BatchReceipt(
                replica_id=self.replica_id, batch=seq, request_ids=ids, receipt=serde.receipt_to_pb(signed)
            )
            self.ctx.send(serving_pb2.ServeUp(receipts=[receipt]))
        if answered:
            trace.span("a.sign", len(answered), started)

    async def _generate(self, p: Pending, seq: int) -> bytes:
        assert self.process is not None

        async def on_tokens(tokens: list[int]) -> None:
            step = serving_pb2.ServeReply(request_id=p.request_id, tokens=tokens, done=False, batch=seq)
            self.ctx.send(serving_pb2.ServeUp(replies=[step]))

        answer = await self.process.generate(p.payload, p.seed, on_tokens)
        if isinstance(answer, bytes):
            self.ctx.send(reply(p.request_id, seq, output=answer))
            return answer
        self.ctx.send(reply(p.request_id, seq, error=answer))
        return b""
