"""Session rows of nodes (core.sessions), submitters (access.submitter_sessions) and submitters'
read-only dashboard links (access.dashboard_sessions).

The tables have the same three columns: token hash, address, expiry (nodes' sessions also
record when they opened: repositories.heartbeats). Every session of one table
lives equally long, so an address's oldest sessions are the ones expiring first, and each table
caps an address's sessions on its own (a dashboard link never pushes out an SDK session).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Engine, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError

from coordinator.db import schema as s
from coordinator.db.sql import chunks
from coordinator.errors import Rejected

# A session's kind → its table; a kind names what its tokens open (api.auth reads "node" and
# "submitter", the dashboard only "dashboard").
TABLES = {"node": s.sessions, "submitter": s.submitter_sessions, "dashboard": s.dashboard_sessions}
SUBMITTER_KINDS = ("submitter", "dashboard")  # what SubmitterService.OpenSession opens


def burn_nonce(conn: Connection, nonce: str, expires_ms: int) -> None:
    """Record a used challenge nonce; IntegrityError if it was used before."""
    conn.execute(insert(s.used_nonces).values(nonce=nonce, expires_ms=expires_ms))


def add_session(
    conn: Connection,
    table: Table,
    token_hash: str,
    address: str,
    expires_ms: int,
    max_per_address: int,
    started_ms: int | None = None,
) -> list[str]:
    """Insert a session and drop the address's oldest beyond max_per_address; returns the dropped
    hashes. started_ms: when it opened, for the tables that record it (nodes' sessions)."""
    values = dict(token_hash=token_hash, address=address, expires_ms=expires_ms)
    if started_ms is not None:
        values["started_ms"] = started_ms
    conn.execute(insert(table).values(**values))
    rows = conn.execute(
        select(table.c.token_hash)
        .where(table.c.address == address)
        .order_by(table.c.expires_ms.desc(), table.c.token_hash)
        .offset(max(1, max_per_address))
    ).all()
    dropped = [str(r.token_hash) for r in rows]
    if dropped:
        conn.execute(delete(table).where(table.c.token_hash.in_(dropped)))
    return dropped


def lookup(engine: Engine, table: Table, token_hash: str) -> tuple[str, int] | None:
    with engine.connect() as conn:
        row = conn.execute(select(table.c.address, table.c.expires_ms).where(table.c.token_hash == token_hash)).first()
    return None if row is None else (str(row.address), int(row.expires_ms))


class SessionRepository:
    """Submitters' sessions (full and dashboard), and the upkeep of every kind; each method is its
    own transaction. (A node's session opens with its registration: NodeRepository.register_node.)"""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open_session(
        self,
        address: str,
        token_hash: str,
        nonce: str,
        now_ms: int,
        ttl_ms: int,
        max_per_address: int,
        kind: str = "submitter",
    ) -> list[str]:
        """Burn the challenge nonce and open a session of `kind` ("submitter" or "dashboard");
        returns the hashes of sessions of that kind it pushed out."""
        if kind not in SUBMITTER_KINDS:
            raise ValueError(f"no submitter session kind {kind!r}")
        try:
            with self.engine.begin() as conn:
                burn_nonce(conn, nonce, now_ms + ttl_ms)
                return add_session(conn, TABLES[kind], token_hash, address, now_ms + ttl_ms, max_per_address)
        except IntegrityError:
            raise Rejected("this session challenge was already used: ask for a new one") from None

    def submitter(self, token_hash: str) -> tuple[str, int] | None:
        """(address, expires_ms) of a submitter's session token, expired or not; None if unknown."""
        return lookup(self.engine, s.submitter_sessions, token_hash)

    def dashboard(self, token_hash: str) -> tuple[str, int] | None:
        """(address, expires_ms) of a dashboard session token, expired or not; None if unknown."""
        return lookup(self.engine, s.dashboard_sessions, token_hash)

    def purge_expired(self, now_ms: int) -> int:
        return purge_expired(self.engine, now_ms)

    def revoke_node(self, address: str) -> list[str]:
        return revoke_node(self.engine, address)

    def held(self, kind: str, token_hashes: Sequence[str]) -> set[str]:
        """Which of these token hashes the database still holds as sessions of `kind` ("node",
        "submitter" or "dashboard"): another replica may have pushed some out or revoked them."""
        table = TABLES[kind]
        found: set[str] = set()
        with self.engine.connect() as conn:
            for part in chunks(list(token_hashes)):
                found.update(r[0] for r in conn.execute(select(table.c.token_hash).where(table.c.token_hash.in_(part))))
        return found


def purge_expired(engine: Engine, now_ms: int) -> int:
    """Delete expired sessions of every kind and expired nonces; returns the sessions deleted."""
    with engine.begin() as conn:
        n = sum(conn.execute(delete(t).where(t.c.expires_ms < now_ms)).rowcount for t in TABLES.values())
        conn.execute(delete(s.used_nonces).where(s.used_nonces.c.expires_ms < now_ms))
    return int(n)


def revoke_node(engine: Engine, address: str) -> list[str]:
    """Delete every session of a node (it lost its stake); returns their hashes."""
    with engine.begin() as conn:
        rows = conn.execute(select(s.sessions.c.token_hash).where(s.sessions.c.address == address)).all()
        conn.execute(delete(s.sessions).where(s.sessions.c.address == address))
    return [str(r.token_hash) for r in rows]
