"""A TCP proxy that makes a link look like a wide-area one: delay each way, a bandwidth cap,
connections reset now and then, and a cut. For tests and benchmarks (this kernel has no netem).

Each direction of each connection is a reader and a writer joined by a queue of timestamped
chunks: the reader stamps a chunk with when it may leave (arrival + delay) and goes on
reading, the writer sleeps until that time and then spends tokens from the direction's
bucket (shared by every connection of the proxy, as a link's bandwidth is). So delay does not
cut throughput (a bandwidth-delay product rides in the queue, up to `buffer_bytes`) and order
is kept. A reset closes both sockets with SO_LINGER 0 (an RST, as a middlebox dropping state
would), after a byte count or a time drawn per connection from a seeded generator.

Who could abuse it: nobody remote. It listens where its caller says (tests: 127.0.0.1 or an
address inside a network namespace they created) and dials one fixed target.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Link:
    """What the proxy does to traffic. delay_s: added one way, in each direction.
    rate_bytes_s: each direction's cap (0: none). reset_mean_bytes / reset_mean_s: a connection
    is reset after a byte count / a time drawn from an exponential with this mean (0: never)."""

    delay_s: float = 0.0
    rate_bytes_s: float = 0.0
    burst_bytes: int = 64 * 1024
    reset_mean_bytes: float = 0.0
    reset_mean_s: float = 0.0
    buffer_bytes: int = 8 << 20  # queued per direction per connection before the reader waits
    seed: int = 0


class TokenBucket:
    """rate bytes/s with `burst` bytes of slack; take() sleeps until the bytes are paid for."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n  # may go negative: the debt is slept off, so big chunks pay in full
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class _Pipe:
    """One direction of one connection: timestamped chunks between a reader and a writer."""

    def __init__(self, link: Link) -> None:
        self.queue: deque[tuple[float, bytes]] = deque()  # (due time, chunk); b"" marks EOF
        self.queued = 0
        self.link = link
        self.has_items = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()

    async def pump_in(self, reader: asyncio.StreamReader, count: _Counter) -> None:
        while True:
            data = await reader.read(CHUNK)
            self.queue.append((time.monotonic() + self.link.delay_s, data))
            self.queued += len(data)
            self.has_items.set()
            if not data:
                return
            count.add(len(data))
            if self.queued >= self.link.buffer_bytes:
                self.has_room.clear()
                await self.has_room.wait()

    async def pump_out(self, writer: asyncio.StreamWriter, bucket: TokenBucket) -> None:
        while True:
            if not self.queue:
                self.has_items.clear()
                await self.has_items.wait()
            due, data = self.queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
            self.queued -= len(data)
            if self.queued < self.link.buffer_bytes:
                self.has_room.set()


class _Counter:
    """Bytes a connection has carried (added to its proxy's count too); trips `reset` when they pass its budget."""

    def __init__(self, budget: float, reset: asyncio.Event, proxy: Proxy) -> None:
        self.left, self.reset, self.proxy = budget, reset, proxy

    def add(self, n: int) -> None:
        self.proxy.carried += n
        if self.left > 0:
            self.left -= n
            if self.left <= 0:
                self.reset.set()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: SO_LINGER on, timeout 0."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Proxy:
    """Listens on listen_host:listen_port (0: any free port, see .port) and forwards each
    connection to target_host:target_port through `link`. Run it in one event loop."""

    def __init__(self, listen_host: str, listen_port: int, target_host: str, target_port: int, link: Link) -> None:
        self.listen_host, self.port = listen_host, listen_port
        self.target = (target_host, target_port)
        self.link = link
        self.rng = random.Random(link.seed)
        self.up_bucket = TokenBucket(link.rate_bytes_s, link.burst_bytes)
        self.down_bucket = TokenBucket(link.rate_bytes_s, link.burst_bytes)
        self.server: asyncio.Server | None = None
        self.conns: set[asyncio.Task[None]] = set()
        self.resets = 0  # connections this proxy reset on purpose (not counting cut())
        self.accepted = 0
        self.carried = 0  # bytes read from either side, over all connections (which link is in use)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.listen_host, self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """The link goes down: every connection is reset and new ones are refused."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for task in list(self.conns):
            task.cancel()
        await asyncio.gather(*self.conns, return_exceptions=True)

    async def restore(self) -> None:
        """The link comes back, on the same port."""
        if self.server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()

    def _draw(self, mean: float) -> float:
        return self.rng.expovariate(1 / mean) if mean > 0 else 0.0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.conns.add(task)
        self.accepted += 1
        try:
            try:
                up_r, up_w = await asyncio.open_connection(*self.target)
            except OSError:
                _rst(writer)
                return
            try:
                await self._relay(reader, writer, up_r, up_w)
            finally:
                _rst(up_w)
        except asyncio.CancelledError:
            pass
        finally:
            _rst(writer)
            self.conns.discard(task)

    async def _relay(
        self,
        down_r: asyncio.StreamReader,
        down_w: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        """Both directions until both reach EOF, or a reset is due (then both sides get an RST)."""
        reset = asyncio.Event()
        count = _Counter(self._draw(self.link.reset_mean_bytes), reset, self)
        to_up, to_down = _Pipe(self.link), _Pipe(self.link)
        pumps = [
            asyncio.ensure_future(to_up.pump_in(down_r, count)),
            asyncio.ensure_future(to_up.pump_out(up_w, self.up_bucket)),
            asyncio.ensure_future(to_down.pump_in(up_r, count)),
            asyncio.ensure_future(to_down.pump_out(down_w, self.down_bucket)),
        ]
        finished: asyncio.Future[Any] = asyncio.gather(*pumps)
        tripped: asyncio.Future[Any] = asyncio.ensure_future(reset.wait())
        timer = self._draw(self.link.reset_mean_s) or None
        try:
            await asyncio.wait({finished, tripped}, timeout=timer, return_when=asyncio.FIRST_COMPLETED)
            if not finished.done():
                self.resets += 1
        finally:
            tripped.cancel()
            for pump in pumps:
                pump.cancel()
            with contextlib.suppress(BaseException):
                await finished


class ProxyThread:
    """Proxies running in an event loop on a thread of their own, optionally inside a network
    namespace (`netns`, a name under /run/netns: the thread joins it before it opens a socket,
    so the listeners and the connections they dial live there; the rest of the process does
    not move). Synchronous calls for tests and benchmarks; stop() ends the loop and the thread."""

    def __init__(self, netns: str | None = None) -> None:
        import threading

        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self.proxies: list[Proxy] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"netsim-{netns or 'local'}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            if self.netns is not None:
                enter_netns(self.netns)
        except BaseException as e:  # reported by __init__
            self._error = e
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        self.loop.close()

    def _call(self, coro: object, timeout: float = 10) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def add(self, listen_host: str, listen_port: int, target_host: str, target_port: int, link: Link) -> Proxy:
        """A proxy started in this thread's loop (and namespace); its .port is where it listens."""
        proxy = Proxy(listen_host, listen_port, target_host, target_port, link)
        self._call(proxy.start())
        self.proxies.append(proxy)
        return proxy

    def cut(self) -> None:
        """Cut every proxy of this thread: the link goes down."""
        for proxy in self.proxies:
            self._call(proxy.cut())

    def restore(self) -> None:
        for proxy in self.proxies:
            self._call(proxy.restore())

    @property
    def resets(self) -> int:
        return sum(p.resets for p in self.proxies)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                self._call(proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace `name` (needs CAP_SYS_ADMIN)."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
