"""Session bounds: expired sessions leave the cache and the database, unknown tokens are
remembered (boundedly) instead of read every call, sessions are capped per address, and
failed authentication is rate-limited per peer host."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from coordinator.api.sessions import FailureLimiter, SessionCache, peer_host, token_hash
from coordinator.errors import Rejected
from coordinator.repositories.store import Store
from tensorgrid.types import Capabilities

A = "0x" + "aa" * 20
B = "0x" + "bb" * 20
CPU = Capabilities(device_kind="cpu", memory_bytes=1 << 30, cpu_cores=1)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    yield st
    st.close()


class Clock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_expired_sessions_leave_the_cache_and_the_database(store: Store) -> None:
    clock = Clock()
    store.sessions.open_session(A, token_hash("old"), "n1", clock.now, 1_000, 8)
    store.sessions.open_session(B, token_hash("new"), "n2", clock.now, 60_000, 8)
    store.nodes.register_node(A, CPU, token_hash("node-old"), clock.now, 1_000, "n3")

    async def lookup(h: str) -> tuple[str, int] | None:
        return store.sessions.submitter(h)

    cache = SessionCache(lookup, clock=clock)
    cache.add("old", A, clock.now + 1_000)
    cache.add("new", B, clock.now + 60_000)
    clock.now += 2_000
    assert cache.evict_expired() == 1
    assert len(cache) == 1
    assert store.sessions.purge_expired(clock.now) == 2  # the submitter's and the node's
    assert store.sessions.submitter(token_hash("old")) is None
    assert store.nodes.session(token_hash("node-old")) is None
    assert store.sessions.submitter(token_hash("new")) == (B, 1_000_000 + 60_000)
    assert asyncio.run(cache.resolve("new")) == B
    assert asyncio.run(cache.resolve("old")) is None


def test_unknown_tokens_are_read_once_per_ttl_and_remembered_boundedly() -> None:
    clock = Clock()
    reads: list[str] = []

    async def lookup(h: str) -> tuple[str, int] | None:
        reads.append(h)
        return None

    cache = SessionCache(lookup, max_entries=50, unknown_ttl_ms=5_000, clock=clock)

    async def flood(n: int, prefix: str) -> None:
        for i in range(n):
            assert await cache.resolve(f"{prefix}{i % 10}") is None

    asyncio.run(flood(1_000, "forged"))
    assert len(reads) == 10  # ten distinct tokens, each read once
    clock.now += 5_001
    asyncio.run(flood(10, "forged"))
    assert len(reads) == 20  # remembered for the TTL only
    for i in range(200):  # many distinct tokens: memory stays bounded
        asyncio.run(cache.resolve(f"distinct-{i}"))
    assert len(cache._unknown) <= 50


def test_a_token_issued_after_a_miss_still_works() -> None:
    clock = Clock()

    async def lookup(h: str) -> tuple[str, int] | None:
        return None

    cache = SessionCache(lookup, clock=clock)
    assert asyncio.run(cache.resolve("t")) is None
    cache.add("t", A, clock.now + 10_000)  # opened on this replica after the miss
    assert asyncio.run(cache.resolve("t")) == A


def test_sessions_are_capped_per_address_oldest_dropped(store: Store) -> None:
    clock = Clock()
    dropped: list[str] = []
    for i in range(5):
        clock.now += 10
        dropped += store.sessions.open_session(A, token_hash(f"a{i}"), f"na{i}", clock.now, 60_000, 3)
    store.sessions.open_session(B, token_hash("b0"), "nb0", clock.now, 60_000, 3)
    assert sorted(dropped) == sorted([token_hash("a0"), token_hash("a1")])
    assert store.sessions.submitter(token_hash("a0")) is None
    assert all(store.sessions.submitter(token_hash(f"a{i}")) for i in (2, 3, 4))
    assert store.sessions.submitter(token_hash("b0")) is not None  # another address is not touched
    node_dropped: list[str] = []
    for i in range(4):
        clock.now += 10
        node_dropped += store.nodes.register_node(A, CPU, token_hash(f"n{i}"), clock.now, 60_000, f"nn{i}", 2)
    assert sorted(node_dropped) == sorted([token_hash("n0"), token_hash("n1")])
    assert store.nodes.session(token_hash("n3")) is not None

    async def lookup(h: str) -> tuple[str, int] | None:
        return store.sessions.submitter(h)

    cache = SessionCache(lookup, clock=clock)
    cache.add("a0", A, clock.now + 60_000)
    cache.discard(dropped)
    assert asyncio.run(cache.resolve("a0")) is None


def test_dashboard_sessions_live_apart_capped_and_purged_on_their_own(store: Store) -> None:
    """A dashboard link's session is in its own table: never found as a full one (nor the other way
    round), capped per address without pushing out full sessions, and purged when it expires."""
    clock = Clock()
    for i in range(2):
        store.sessions.open_session(A, token_hash(f"full{i}"), f"nf{i}", clock.now, 60_000, 2)
    dropped: list[str] = []
    for i in range(4):
        clock.now += 10
        dropped += store.sessions.open_session(A, token_hash(f"d{i}"), f"nd{i}", clock.now, 1_000, 2, "dashboard")
    assert sorted(dropped) == sorted([token_hash("d0"), token_hash("d1")])
    assert store.sessions.dashboard(token_hash("d3")) == (A, clock.now + 1_000)
    assert store.sessions.submitter(token_hash("d3")) is None  # what the gRPC services read
    assert store.sessions.dashboard(token_hash("full0")) is None  # what the dashboard reads
    assert all(store.sessions.submitter(token_hash(f"full{i}")) for i in (0, 1))  # not pushed out
    hashes = [token_hash(t) for t in ("d0", "d2", "d3", "full0")]
    assert store.sessions.held("dashboard", hashes) == {token_hash("d2"), token_hash("d3")}
    with pytest.raises(Rejected, match="already used"):  # one challenge opens one session, of either kind
        store.sessions.open_session(A, token_hash("again"), "nd3", clock.now, 60_000, 2)
    with pytest.raises(ValueError, match="no submitter session kind"):
        store.sessions.open_session(A, token_hash("x"), "nx", clock.now, 1_000, 2, "node")

    async def lookup(h: str) -> tuple[str, int] | None:
        return store.sessions.dashboard(h)

    cache = SessionCache(lookup, clock=clock)
    assert asyncio.run(cache.resolve("d3")) == A
    clock.now += 1_001  # the dashboard sessions' end; the full ones live on
    assert asyncio.run(cache.resolve("d3")) is None
    assert store.sessions.purge_expired(clock.now) == 2  # d2, d3
    assert store.sessions.held("dashboard", hashes) == set()
    assert store.sessions.held("submitter", hashes) == {token_hash("full0")}


def test_revoking_a_node_ends_its_sessions(store: Store) -> None:
    clock = Clock()
    store.nodes.register_node(A, CPU, token_hash("n"), clock.now, 60_000, "x1")
    store.nodes.register_node(B, CPU, token_hash("m"), clock.now, 60_000, "x2")
    assert store.sessions.revoke_node(A) == [token_hash("n")]
    assert store.nodes.session(token_hash("n")) is None
    assert store.nodes.session(token_hash("m")) is not None

    async def lookup(h: str) -> tuple[str, int] | None:
        return store.nodes.session(h)

    cache = SessionCache(lookup, clock=clock)
    cache.add("n", A, clock.now + 60_000)
    cache.add("m", B, clock.now + 60_000)
    assert cache.revoke(A) == 1
    assert asyncio.run(cache.resolve("n")) is None
    assert asyncio.run(cache.resolve("m")) == B


def test_failed_authentication_is_limited_per_host_for_one_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(limit=3, window_ms=10_000, max_hosts=4, clock=clock)
    for _ in range(3):
        assert limiter.retry_after_ms("ipv4:10.0.0.1") == 0
        limiter.failed("ipv4:10.0.0.1")
    assert limiter.retry_after_ms("ipv4:10.0.0.1") == 10_000
    assert limiter.retry_after_ms("ipv4:10.0.0.2") == 0  # another host is not affected
    clock.now += 4_000
    assert limiter.retry_after_ms("ipv4:10.0.0.1") == 6_000
    clock.now += 6_000
    assert limiter.retry_after_ms("ipv4:10.0.0.1") == 0  # the window passed
    for i in range(20):
        limiter.failed(f"ipv4:10.1.0.{i}")
    assert len(limiter._hosts) <= 4


def test_peer_host_drops_the_port() -> None:
    assert peer_host("ipv4:127.0.0.1:53412") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:40000") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"
