"""Registration challenges: issued per address, fresh, and unforgeable."""

from __future__ import annotations

import pytest

from coordinator.api.auth import CHALLENGE_TTL_MS, check_challenge, make_challenge
from coordinator.errors import PermissionDenied

SECRET = b"s" * 32
A = "0x" + "aa" * 20
B = "0x" + "bb" * 20


def test_fresh_challenge_for_the_same_address_passes() -> None:
    nonce = make_challenge(SECRET, A, 1_000)
    check_challenge(SECRET, A, nonce, 1_000 + CHALLENGE_TTL_MS)
    check_challenge(SECRET, A.upper().replace("0X", "0x"), nonce, 2_000)  # case does not matter


@pytest.mark.parametrize(
    ("secret", "address", "now", "message"),
    [
        (SECRET, B, 2_000, "not issued for this address"),
        (b"x" * 32, A, 2_000, "not issued for this address"),
        (SECRET, A, 1_000 + CHALLENGE_TTL_MS + 1, "expired"),
    ],
)
def test_wrong_address_secret_or_age_is_refused(secret: bytes, address: str, now: int, message: str) -> None:
    nonce = make_challenge(SECRET, A, 1_000)
    with pytest.raises(PermissionDenied, match=message):
        check_challenge(secret, address, nonce, now)


def test_tampered_or_malformed_nonce_is_refused() -> None:
    nonce = bytearray(make_challenge(SECRET, A, 1_000))
    nonce[3] ^= 1
    with pytest.raises(PermissionDenied):
        check_challenge(SECRET, A, bytes(nonce), 2_000)
    with pytest.raises(PermissionDenied, match="malformed"):
        check_challenge(SECRET, A, b"short", 2_000)


@pytest.fixture
def sessions_db(db_url: str):  # type: ignore[no-untyped-def]
    from coordinator.repositories.store import Store

    s = Store(db_url)
    yield s
    s.close()


def test_a_cached_session_stops_working_when_it_expires(sessions_db) -> None:  # type: ignore[no-untyped-def]
    """Whether it was cached at registration or loaded from the database, a session ends on time."""
    import asyncio

    from coordinator.api import auth
    from tensorgrid.types import Capabilities

    nodes = sessions_db.nodes
    lookups: list[str] = []

    async def lookup(h: str) -> tuple[str, int] | None:
        lookups.append(h)
        return nodes.session(h)

    clock = {"now": 1_000}
    caps = Capabilities(device_kind="cpu", memory_bytes=1 << 30, cpu_cores=1)
    for token, nonce in (("registered-here", "n1"), ("registered-elsewhere", "n2")):
        nodes.register_node(A, caps, auth.token_hash(token), 1_000, 5_000, nonce)
    cache = auth.SessionCache(lookup, clock=lambda: clock["now"])
    cache.add("registered-here", A, 1_000 + 5_000)

    async def resolve(token: str) -> str | None:
        return await cache.resolve(token)

    assert asyncio.run(resolve("registered-here")) == A
    assert asyncio.run(resolve("registered-elsewhere")) == A  # e.g. a restart or another replica
    assert asyncio.run(resolve("never-issued")) is None
    assert len(lookups) == 2
    assert asyncio.run(resolve("registered-elsewhere")) == A  # now cached: no second lookup
    assert len(lookups) == 2
    clock["now"] = 6_000  # the last millisecond of both sessions
    assert asyncio.run(resolve("registered-here")) == A
    assert asyncio.run(resolve("registered-elsewhere")) == A
    clock["now"] = 6_001
    assert asyncio.run(resolve("registered-here")) is None
    assert asyncio.run(resolve("registered-elsewhere")) is None


def test_session_cache_stays_bounded() -> None:
    import asyncio

    from coordinator.api import auth, sessions

    async def lookup(h: str) -> tuple[str, int] | None:
        return None

    cache = auth.SessionCache(lookup, max_entries=10)
    far = sessions.now_ms() + 60_000
    for i in range(25):
        cache.add(f"t{i}", A, far)
    assert len(cache._cache) <= 10
    assert asyncio.run(cache.resolve("t24")) == A  # the newest survive
