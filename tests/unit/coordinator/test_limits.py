"""Peer limits without a server: who is counted, what each limit refuses, and that releasing frees it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from coordinator.api.limits import PeerLimiter, peer_host
from coordinator.config import PeerLimits
from coordinator.services.blobs import MemoryBudget, collect, drain
from tensorgrid.errors import BlobError, HashMismatch
from tensorgrid.rpc import CONTROL_MESSAGE_BYTES, RETRY_AFTER_METADATA_KEY, request_limit, retry_after_s

NODE, OTHER = "0x" + "aa" * 20, "0x" + "bb" * 20
LIMITS = PeerLimits(
    calls_per_node=3, streams_per_node=2, calls_per_ip=4, streams_per_ip=1, calls_total=6, streams_total=3
)


def test_peer_host_of_grpc_peer_strings() -> None:
    assert peer_host("ipv4:203.0.113.7:51234") == "203.0.113.7"
    assert peer_host("ipv6:[2001:db8::1]:443") == "2001:db8::1"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"


def test_streams_and_calls_per_node_then_release() -> None:
    lim = PeerLimiter(LIMITS)
    assert lim.acquire(NODE, True, True) is None
    assert lim.acquire(NODE, True, True) is None
    refusal = lim.acquire(NODE, True, True)
    assert refusal is not None and "2 streams open (limit 2)" in refusal and NODE in refusal
    assert lim.acquire(NODE, True, False) is None  # a unary call still fits under calls_per_node
    assert "3 calls in flight (limit 3)" in (lim.acquire(NODE, True, False) or "")
    assert lim.acquire(OTHER, True, True) is None  # another node is not held back
    lim.release(NODE, True)
    assert lim.acquire(NODE, True, True) is None
    assert lim.in_flight(NODE) == (3, 2)


def test_ip_limits_and_the_total() -> None:
    lim = PeerLimiter(LIMITS)
    assert lim.acquire("198.51.100.1", False, True) is None
    assert "address 198.51.100.1" in (lim.acquire("198.51.100.1", False, True) or "")
    for peer in ("a", "b", "c", "d", "e"):
        assert lim.acquire(peer, True, False) is None
    assert "the coordinator is serving 6 calls" in (lim.acquire("f", True, False) or "")
    for peer in ("a", "b"):
        lim.release(peer, False)
    assert lim.acquire("f", True, False) is None
    assert lim.in_flight("a") == (0, 0) and "a" not in lim._calls  # idle peers are forgotten


def test_request_limits_per_method() -> None:
    assert request_limit("/tensorgrid.v1.NodeService/LeaseTasks") == CONTROL_MESSAGE_BYTES
    assert request_limit("/tensorgrid.v1.NodeService/SubmitResult") > 1 << 20
    assert request_limit("/tensorgrid.v1.NodeService/SubmitSmallResult") < 1 << 20


def test_retry_hint_from_trailing_metadata() -> None:
    class Refused:
        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return ((RETRY_AFTER_METADATA_KEY, "2000"),)

    assert retry_after_s(Refused(), 1) == 2.0
    assert retry_after_s(Refused(), 3) == 4.0
    assert retry_after_s(object(), 2) == 1.0  # no hint: backoff


async def _chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p


def test_memory_budget_and_bounded_collect() -> None:
    budget = MemoryBudget(100)
    assert budget.take(60) and not budget.take(41) and budget.take(40)
    budget.give(60)
    assert budget.used == 40 and budget.take(60)
    assert asyncio.run(collect(_chunks(b"ab", b"c"), 3)) == b"abc"
    with pytest.raises(HashMismatch, match="more output bytes than the 3"):
        asyncio.run(collect(_chunks(b"ab", b"cd" * 1000), 3))
    with pytest.raises(BlobError, match="more bytes than the 2"):
        asyncio.run(drain(_chunks(b"ab", b"c"), 2))
