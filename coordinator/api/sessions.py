"""Session tokens in memory: a bounded cache in front of the database, a negative cache of
unknown tokens, and a per-peer limit on failed authentication.

Nothing here is trusted across replicas: the database holds the sessions; a cache only spares
the database a read per call. A session another replica drops (pushed out, revoked) leaves this
replica's cache at its next purge of expired sessions (every minute, api.server), not at once.
A token is stored and looked up by its sha256, never in clear.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable

Lookup = Callable[[str], Awaitable[tuple[str, int] | None]]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


class SessionCache:
    """Token → address, backed by the database so sessions survive a restart.

    Each entry keeps its session's expiry (fixed when the session opens), so a cached session
    stops working at the same moment as one read from the database. A token the database does
    not know is remembered as unknown for `unknown_ttl_ms` (bounded), so a flood of made-up
    tokens does not cost a database read each.
    """

    def __init__(
        self,
        lookup: Lookup,
        max_entries: int = 100_000,
        unknown_ttl_ms: int = 5_000,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._lookup = lookup
        self._cache: dict[str, tuple[str, int]] = {}  # token hash → (address, expires_ms)
        self._unknown: dict[str, int] = {}  # token hash → remembered as unknown until (ms)
        self._max = max_entries
        self._unknown_ttl = unknown_ttl_ms
        self._clock = clock
        self.lookups = 0  # database reads, for tests and logs

    def __len__(self) -> int:
        return len(self._cache)

    def add(self, token: str, address: str, expires_ms: int) -> None:
        h = token_hash(token)
        self._unknown.pop(h, None)
        self._put(h, (address, expires_ms), self._clock())

    async def resolve(self, token: str) -> str | None:
        h = token_hash(token)
        now = self._clock()
        entry = self._cache.get(h)
        if entry is None:
            if self._unknown.get(h, 0) > now:
                return None
            self.lookups += 1
            entry = await self._lookup(h)
            if entry is None or entry[1] < now:
                self._remember_unknown(h, now)
                return None
            self._put(h, entry, now)
        address, expires_ms = entry
        if expires_ms < now:
            self._cache.pop(h, None)
            return None
        return address

    def discard(self, hashes: Iterable[str]) -> None:
        """Forget sessions the database dropped (pushed out by newer ones, or revoked)."""
        for h in hashes:
            self._cache.pop(h, None)

    def cached(self) -> list[str]:
        """The token hashes held now (to ask the database which it still has)."""
        return list(self._cache)

    def keep_held(self, asked: Iterable[str], held: set[str]) -> int:
        """Of the hashes `asked` about, forget those the database no longer holds (another
        replica pushed them out or revoked them); returns how many."""
        gone = [h for h in asked if h not in held and h in self._cache]
        self.discard(gone)
        return len(gone)

    def revoke(self, address: str) -> int:
        """Forget every cached session of an address; returns how many."""
        gone = [h for h, (a, _) in self._cache.items() if a == address]
        self.discard(gone)
        return len(gone)

    def evict_expired(self) -> int:
        """Drop expired sessions and stale unknown-token entries; returns the sessions dropped."""
        now = self._clock()
        before = len(self._cache)
        self._cache = {h: e for h, e in self._cache.items() if e[1] >= now}
        self._unknown = {h: t for h, t in self._unknown.items() if t > now}
        return before - len(self._cache)

    def _put(self, h: str, entry: tuple[str, int], now: int) -> None:
        if len(self._cache) >= self._max:
            self._cache = {k: e for k, e in self._cache.items() if e[1] >= now}
            if len(self._cache) >= self._max:  # still full: the oldest half go (they reload on use)
                self._cache = dict(list(self._cache.items())[len(self._cache) // 2 :])
        self._cache[h] = entry

    def _remember_unknown(self, h: str, now: int) -> None:
        if len(self._unknown) >= self._max:
            self._unknown = {k: t for k, t in self._unknown.items() if t > now}
            if len(self._unknown) >= self._max:
                self._unknown = dict(list(self._unknown.items())[len(self._unknown) // 2 :])
        self._unknown[h] = now + self._unknown_ttl


class FailureLimiter:
    """Failed authentications per peer host in fixed windows: past `limit` in one window, the host
    is refused (with how long to wait) until the window ends. Bounded in memory."""

    def __init__(
        self, limit: int = 30, window_ms: int = 60_000, max_hosts: int = 100_000, clock: Callable[[], int] = now_ms
    ) -> None:
        self.limit = limit
        self.window_ms = window_ms
        self._max = max_hosts
        self._clock = clock
        self._hosts: dict[str, tuple[int, int]] = {}  # host → (window start ms, failures in it)

    def retry_after_ms(self, host: str) -> int:
        """0 if the host may try to authenticate; else how long until it may."""
        now = self._clock()
        start, count = self._hosts.get(host, (now, 0))
        if now - start >= self.window_ms or count < self.limit:
            return 0
        return start + self.window_ms - now

    def failed(self, host: str) -> None:
        now = self._clock()
        start, count = self._hosts.get(host, (now, 0))
        if now - start >= self.window_ms:
            start, count = now, 0
        if host not in self._hosts and len(self._hosts) >= self._max:
            self._hosts = {h: w for h, w in self._hosts.items() if now - w[0] < self.window_ms}
            if len(self._hosts) >= self._max:
                self._hosts = dict(list(self._hosts.items())[len(self._hosts) // 2 :])
        self._hosts[host] = (start, count + 1)


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string: "ipv4:1.2.3.4:5678" → "ipv4:1.2.3.4", "ipv6:[::1]:5" → "ipv6:[::1]"."""
    head, sep, tail = peer.rpartition(":")
    return head if sep and tail.isdigit() and ":" in head else peer
