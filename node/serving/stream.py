"""The agent's NodeService.Serve stream: the coordinator's assignments and requests in, the
replicas' states, replies and receipts out.

Opened once the agent is registered, with ServeHello{max_replicas} first. When it breaks it
is opened again with backoff (capped at MAX_BACKOFF_S), and every replica is dropped first:
the coordinator assigns them again on the new stream. A stream that ended UNAVAILABLE moves the
client to the next coordinator replica (tensorgrid.failover), so the node re-attaches to the one
left when its replica dies (coordinator/services/serving/service.py says how replicas share).
It hands that replica the batches the dead one counted in the last COUNTED_HOLD_S (each
ServeDown.counted, tagged by the coordinator), so what the dead one had not written yet is
paid by the one left, once. There the endpoints it served are warm: a broken stream's idle
replicas keep their loaded child for PARK_S, the next stream's ServeHello names their endpoints
(the coordinator places those here first), and a replica assigned for the same endpoint,
program and settings adopts the child instead of starting one (about a second instead of a
cold start's many).
A coordinator without serving (UNIMPLEMENTED) is asked again only every UNIMPLEMENTED_RETRY_S.
Draining ends the stream cleanly: replicas are released (their queued requests answered
RELEASED), then the node half-closes its side and waits briefly for the coordinator to close
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from node.serving.process import ServingProcess
from node.serving.replica import Replica, ReplicaContext, reply
from tensorgrid import serde
from tensorgrid.nodeclient import NodeClient
from tensorgrid.retry import backoff
from tensorgrid.serving.coalesce import coalesced
from tensorgrid.tls import host_of
from tensorgrid.types import ErrorKind, TaskError
from tensorgrid.v1 import serving_pb2

__all__ = ["ServeLoop"]

log = logging.getLogger("tensorgrid.node.serving")


def _reply_bytes(up: serving_pb2.ServeUp) -> int:
    return sum(len(r.output) for r in up.replies)


MAX_BACKOFF_S = 2.0
UNIMPLEMENTED_RETRY_S = 60.0
HEALTHY_S = 10.0  # a stream that lived this long resets the backoff
CLOSE_GRACE_S = 2.0
RECEIPT_DELAY_S = 0.05  # a receipt waits at most this long to ride with the next replies
PARK_S = 30.0  # a broken stream's warm children wait this long for a replica to adopt them
COUNTED_HOLD_S = 10.0  # a batch the coordinator counted is handed to the next stream this long
MAX_WARM = 64  # endpoints a hello names (the coordinator reads no more)

OnError = Callable[[grpc.aio.AioRpcError, str], Awaitable[None]]
MakeContext = Callable[[Callable[[serving_pb2.ServeUp], None]], ReplicaContext]


class ServeLoop:
    """Holds the Serve stream open while the agent runs; owns this node's replicas."""

    def __init__(
        self,
        client: NodeClient,
        max_replicas: int,
        context: MakeContext,
        registered: asyncio.Event,
        draining: asyncio.Event,
        on_error: OnError | None = None,
    ) -> None:
        """context(send) builds what a replica needs (fetch, sign, spawn) around the stream's send;
        on_error is the agent's handling of a failed call (UNAUTHENTICATED: register again)."""
        self.client = client
        self.max_replicas = max_replicas
        self._context = context
        self._registered = registered
        self._draining = draining
        self._on_error = on_error
        self.replicas: dict[str, Replica] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._outgoing: asyncio.Queue[serving_pb2.ServeUp | None] = asyncio.Queue()
        self._receipts: list[serving_pb2.BatchReceipt] = []  # waiting to ride with the next replies
        self._receipt_timer: asyncio.TimerHandle | None = None
        # warm children of a broken stream's replicas, by Replica.warm_key, until PARK_S passes
        self._parked: dict[tuple[object, ...], tuple[ServingProcess, asyncio.TimerHandle]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # batches the coordinator replica counted lately (BatchCounted), with when: if it dies
        # before writing them, the next stream's hello hands them to the replica left
        self._counted: list[tuple[float, serving_pb2.BatchCounted]] = []

    async def run(self) -> None:
        """Serve until draining."""
        failures = 0
        while not self._draining.is_set():
            await self._wait_or_drain(self._registered.wait())
            if self._draining.is_set():
                break
            opened = time.monotonic()
            wait = 0.0
            generation = self.client.targets.generation
            try:
                await self._session()
            except grpc.aio.AioRpcError as e:
                # the replica died (UNAVAILABLE): the next stream goes to the next address, where
                # that replica assigns this node the endpoints' replicas again
                self.client.failed(e, generation)
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    if failures == 0:
                        log.info("the coordinator does not serve endpoints; asking again every %.0fs",
                                 UNIMPLEMENTED_RETRY_S)  # fmt: skip
                    wait = UNIMPLEMENTED_RETRY_S
                elif self._on_error is not None:
                    await self._on_error(e, "serve stream")
            except Exception:  # a fault here must not end serving for the daemon's life: reconnect
                log.exception("the serve stream failed")
            finally:
                await self._drop_all("the serve stream closed", keep=True)
            failures = 1 if time.monotonic() - opened > HEALTHY_S else failures + 1
            await self._wait_or_drain(asyncio.sleep(wait or backoff(failures, 0.1, cap=MAX_BACKOFF_S)))
        await self._drop_all("the node is draining")

    async def _wait_or_drain(self, aw: Awaitable[object]) -> None:
        waiting = asyncio.ensure_future(aw)
        drained = asyncio.ensure_future(self._draining.wait())
        await asyncio.wait({waiting, drained}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        drained.cancel()

    # ---- one stream -----------------------------------------------------------------------------
    async def _session(self) -> None:
        outgoing: asyncio.Queue[serving_pb2.ServeUp | None] = asyncio.Queue()
        self._outgoing = outgoing
        self._receipts = []  # a previous stream's receipts went with its replicas
        outgoing.put_nowait(self._hello())

        call = self.client.serve(coalesced(outgoing, ("replies", "receipts"), _reply_bytes, self._written))
        reader = asyncio.ensure_future(self._read(call))
        drained = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({reader, drained}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():  # draining: release, half-close, let the coordinator end it
                await self._drop_all("the node is draining")
                self._flush_receipts()  # the last batches' receipts go before the stream ends
                outgoing.put_nowait(None)
                with contextlib.suppress(asyncio.TimeoutError, grpc.aio.AioRpcError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(reader), CLOSE_GRACE_S)
                return
            reader.result()  # raises what broke the stream
        finally:
            drained.cancel()
            reader.cancel()
            call.cancel()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        async for down in call:
            self._dispatch(down)

    def send(self, msg: serving_pb2.ServeUp) -> None:
        """Queue a message up the current stream (dropped with the stream if it breaks).

        A message of receipts alone waits (RECEIPT_DELAY_S at most) to ride with the next
        replies: a receipt is needed within seconds, a reply at once, and a lone client would
        otherwise cost both ends two stream messages per request instead of one."""
        if msg.WhichOneof("msg") is None and not msg.replies:
            self._receipts.extend(msg.receipts)
            if self._receipt_timer is None:
                loop = asyncio.get_running_loop()
                self._receipt_timer = loop.call_later(RECEIPT_DELAY_S, self._flush_receipts)
            return
        if self._receipts and msg.replies:
            msg.receipts.extend(self._receipts)  # after the replies they may follow: handled in order
            self._receipts.clear()
        self._outgoing.put_nowait(msg)

    def _written(self, msg: serving_pb2.ServeUp) -> None:
        """Replies went up the stream: now is the time to sign the receipts of the batches they
        answered (Replica.sign_receipts), after the stream's writer has asked for its next
        message. Not before the replies (it would delay them), nor right after a batch went to
        the worker's pipe (a pipe's reader is woken on the writer's core, expected to be free)."""
        if msg.replies:
            asyncio.get_running_loop().call_soon(self._sign_receipts)

    def _sign_receipts(self) -> None:
        for replica in list(self.replicas.values()):
            replica.sign_receipts()

    def _flush_receipts(self) -> None:
        if self._receipt_timer is not None:
            self._receipt_timer.cancel()
        self._receipt_timer = None
        if self._receipts:
            self._outgoing.put_nowait(serving_pb2.ServeUp(receipts=self._receipts))
            self._receipts = []

    def _hello(self) -> serving_pb2.ServeUp:
        """A stream's first message: the replicas this node may hold, the endpoints it holds warm
        and the batches the previous stream's coordinator replica counted lately."""
        warm = list(dict.fromkeys(str(key[0]) for key in self._parked))[:MAX_WARM]
        self._forget_counted()
        counted = [c for _, c in self._counted]
        hello = serving_pb2.ServeHello(max_replicas=self.max_replicas, warm_endpoints=warm, counted=counted)
        return serving_pb2.ServeUp(hello=hello)

    def _forget_counted(self) -> None:
        """Batches counted longer ago than COUNTED_HOLD_S are written by now (once a second)."""
        cutoff = time.monotonic() - COUNTED_HOLD_S
        if self._counted and self._counted[0][0] < cutoff:
            self._counted = [(at, c) for at, c in self._counted if at >= cutoff]

    def _dispatch(self, down: serving_pb2.ServeDown) -> None:
        if down.counted:
            now = time.monotonic()
            self._counted.extend((now, c) for c in down.counted)
            self._forget_counted()
        for r in down.requests:
            replica = self.replicas.get(r.replica_id)
            if replica is None:
                self.send(reply(r.request_id, 0, error=TaskError(ErrorKind.RELEASED, "no such replica on this node")))
            else:
                replica.submit(r)
        kind = down.WhichOneof("msg")
        if kind == "cancel":
            for replica in self.replicas.values():
                if replica.cancel(down.cancel.request_id):
                    break
        elif kind == "assign":
            self._assign(down.assign)
        elif kind == "release":
            gone = self.replicas.pop(down.release.replica_id, None)
            if gone is not None:
                log.info("replica %s released: %s", gone.replica_id[:12], down.release.reason or "no reason given")
                self._spawn(gone.close(f"released: {down.release.reason}"))

    def _assign(self, assign: serving_pb2.ReplicaAssign) -> None:
        if assign.replica_id in self.replicas:
            return
        if len(self.replicas) >= self.max_replicas:
            error = TaskError(ErrorKind.RELEASED, f"this node holds its maximum of {self.max_replicas} replicas")
            state = serving_pb2.ReplicaState(replica_id=assign.replica_id, ready=False, error=serde.error_to_pb(error))
            self.send(serving_pb2.ServeUp(state=state))
            return
        ctx = self._context(self.send)
        if assign.data_port:  # offered the coordinator's data port: it is on the host we dial
            ctx.data_host = host_of(self.client.target)
        replica = Replica(assign, ctx)
        self.replicas[assign.replica_id] = replica
        parked = self._parked.pop(replica.warm_key, None)
        if parked is not None:
            parked[1].cancel()
            replica.warm = parked[0]

        async def start() -> None:
            if not await replica.start() and self.replicas.get(replica.replica_id) is replica:
                del self.replicas[replica.replica_id]

        self._spawn(start())

    def _spawn(self, coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop_all(self, reason: str, keep: bool = False) -> None:
        """Release every replica and wait for their children to stop; keep: park the idle ones'
        loaded children for the next stream instead (else every parked child stops too)."""
        replicas, self.replicas = list(self.replicas.values()), {}
        for task in list(self._tasks):  # replicas still starting
            task.cancel()
        kept = await asyncio.gather(*(r.close(reason, keep=keep) for r in replicas), return_exceptions=True)
        for replica, process in zip(replicas, kept, strict=True):
            if isinstance(process, ServingProcess):
                self._park(replica.warm_key, process)
        if not keep:
            parked, self._parked = list(self._parked.values()), {}
            for _, timer in parked:
                timer.cancel()
            await asyncio.gather(*(process.close() for process, _ in parked), return_exceptions=True)

    def _park(self, key: tuple[object, ...], process: ServingProcess) -> None:
        old = self._parked.pop(key, None)
        if old is not None:  # two replicas of one endpoint: one child is enough to keep
            old[1].cancel()
            self._stop(old[0])
        timer = asyncio.get_running_loop().call_later(PARK_S, self._unpark, key, process)
        self._parked[key] = (process, timer)
        log.info("endpoint %s stays warm for %.0f s for the next stream", str(key[0])[:12], PARK_S)

    def _unpark(self, key: tuple[object, ...], process: ServingProcess) -> None:
        """No replica adopted the child in time: stop it."""
        if self._parked.get(key, (None,))[0] is process:
            del self._parked[key]
            self._stop(process)

    def _stop(self, process: ServingProcess) -> None:
        """Stop a parked child in the background (not one of the tasks a drop cancels)."""
        task: asyncio.Task[None] = asyncio.ensure_future(process.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
