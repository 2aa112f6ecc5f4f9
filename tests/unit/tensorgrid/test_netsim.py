"""The WAN proxy on 127.0.0.1: added delay each way, the bandwidth cap, resets, a cut link."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from tensorgrid.testing.netsim import Link, Proxy, ProxyThread

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _through(link: Link, handler: Handler) -> tuple[asyncio.Server, Proxy]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    proxy = Proxy("127.0.0.1", 0, "127.0.0.1", server.sockets[0].getsockname()[1], link)
    await proxy.start()
    return server, proxy


def test_delay_is_added_each_way() -> None:
    arrivals: list[float] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            arrivals.append(time.monotonic())
            writer.write(line)
            await writer.drain()
        writer.close()

    async def main() -> tuple[list[float], list[float]]:
        server, proxy = await _through(Link(delay_s=0.05), echo)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        ups, rtts = [], []
        for _ in range(5):
            sent = time.monotonic()
            writer.write(b"ping\n")
            await writer.drain()
            assert await reader.readline() == b"ping\n"
            rtts.append(time.monotonic() - sent)
            ups.append(arrivals[-1] - sent)
        writer.close()
        await proxy.close()
        server.close()
        return ups, rtts

    ups, rtts = asyncio.run(main())
    downs = [rtt - up for rtt, up in zip(rtts, ups, strict=True)]
    assert min(ups) >= 0.05 and min(downs) >= 0.05, (ups, downs)
    assert max(rtts) < 0.3, rtts  # delay, not the proxy's own slowness


def test_bandwidth_cap_holds_and_order_is_kept() -> None:
    rate, size = 2_000_000, 1_000_000
    got = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            got.extend(data)
        writer.close()

    async def main() -> float:
        server, proxy = await _through(Link(delay_s=0.05, rate_bytes_s=rate), sink)
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = bytes(range(250)) * (size // 250)
        start = time.monotonic()
        writer.write(payload)
        writer.write_eof()
        while len(got) < size:
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - start
        assert bytes(got) == payload
        assert proxy.carried == size  # what a test reads to see which link is in use
        writer.close()
        await proxy.close()
        server.close()
        return elapsed

    elapsed = asyncio.run(main())
    expected = (size - 64 * 1024) / rate + 0.05  # the bucket's burst goes at once; one delay
    assert expected * 0.9 <= elapsed <= expected * 1.3, (elapsed, expected)


def test_a_connection_is_reset_after_its_drawn_byte_count() -> None:
    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with pytest.raises(ConnectionResetError):
            while await reader.read(1 << 16):
                pass
        writer.close()

    async def main() -> int:
        server, proxy = await _through(Link(reset_mean_bytes=100_000, seed=7), sink)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises(ConnectionResetError):
            for _ in range(10_000):  # 640 MB: far past any draw
                writer.write(b"x" * 65536)
                await writer.drain()
            await reader.read(1)
        writer.close()
        await proxy.close()
        server.close()
        return proxy.resets

    assert asyncio.run(main()) == 1


def test_cut_resets_connections_and_refuses_new_ones_until_restored() -> None:
    ended: list[str] = []  # how each connection the proxy made to the server ended

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            ended.append("eof")
        except ConnectionResetError:
            ended.append("reset")
        writer.close()

    server: asyncio.Server | None = None

    async def listen() -> int:
        nonlocal server
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    async def close_server() -> None:
        # On the loop the server lives in: closing it from this thread races its handlers.
        assert server is not None
        server.close()
        await server.wait_closed()

    with ProxyThread() as link:
        port = asyncio.run_coroutine_threadsafe(listen(), link.loop).result(5)
        proxy = link.add("127.0.0.1", 0, "127.0.0.1", port, Link())

        async def client() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"hi\n")
            assert await reader.readline() == b"hi\n"
            await asyncio.to_thread(link.cut)
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                writer.write(b"again\n")
                await writer.drain()
                await reader.readexactly(6)
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", proxy.port)
            await asyncio.to_thread(link.restore)
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"back\n")
            assert await reader.readline() == b"back\n"
            writer.close()
            await writer.wait_closed()

        asyncio.run(client())
        link.cut()  # ends the second connection the proxy made too
        asyncio.run_coroutine_threadsafe(close_server(), link.loop).result(5)
    # The cut reset the first connection on the server's side as well; the second ended by the
    # client's close or by the last cut, whichever came first.
    assert ended[0] == "reset"
    assert len(ended) == 2 and ended[1] in ("eof", "reset")
