"""Nodes, their sessions and their standing: registration, heartbeats, failure backoff."""

from __future__ import annotations

import json
from dataclasses import asdict

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from coordinator.db import schema as s
from coordinator.errors import Rejected
from coordinator.repositories.ledger import slashing
from coordinator.repositories.sessions import add_session, burn_nonce, lookup
from tensorgrid.crypto import normalize_address
from tensorgrid.retry import backoff
from tensorgrid.types import Capabilities, NodeStatus

BACKOFF_BASE_MS = 500
BACKOFF_MAX_MS = 60_000


def backoff_ms(consecutive_failures: int) -> int:
    """Exponential backoff for a node that keeps failing: 0.5 s, 1 s, 2 s … capped at 60 s."""
    return int(backoff(consecutive_failures, BACKOFF_BASE_MS, cap=BACKOFF_MAX_MS))


class NodeRepository:
    """Nodes over one engine; each method is its own transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register_node(
        self,
        address: str,
        caps: Capabilities,
        token_hash: str,
        now_ms: int,
        session_ms: int,
        nonce: str,
        max_sessions: int = 8,
    ) -> list[str]:
        """Record the node, burn its challenge nonce (a replayed registration fails) and open a session,
        dropping the node's oldest beyond max_sessions; returns the dropped sessions' hashes."""
        caps_json = json.dumps(asdict(caps), sort_keys=True)
        values = dict(
            capabilities=caps_json,
            device_kind=caps.device_kind,
            memory_bytes=caps.memory_bytes,
            last_seen_ms=now_ms,
            draining=False,
        )
        try:
            with self.engine.begin() as conn:
                burn_nonce(conn, nonce, now_ms + session_ms)
                exists = conn.execute(select(s.nodes.c.address).where(s.nodes.c.address == address)).first()
                if exists:
                    conn.execute(update(s.nodes).where(s.nodes.c.address == address).values(**values))
                else:
                    conn.execute(insert(s.nodes).values(address=address, registered_ms=now_ms, **values))
                expires = now_ms + session_ms
                return add_session(conn, s.sessions, token_hash, address, expires, max_sessions, started_ms=now_ms)
        except IntegrityError:
            raise Rejected("this registration challenge was already used: ask for a new one") from None

    def session_address(self, token_hash: str, now_ms: int) -> str | None:
        found = self.session(token_hash)
        if found is None or found[1] < now_ms:
            return None
        return found[0]

    def session(self, token_hash: str) -> tuple[str, int] | None:
        """(address, expires_ms) of a session token, expired or not; None if unknown."""
        return lookup(self.engine, s.sessions, token_hash)

    def count_alive(self, since_ms: int) -> int:
        """Nodes seen (a heartbeat, a registration, a result) at any replica since since_ms."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(s.nodes.c.last_seen_ms >= since_ms)).scalar_one())

    def get_node(self, address: str) -> NodeStatus | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.nodes).where(s.nodes.c.address == address)).first()
            slashed = slashing.slashed_by_node(conn, [address]) if row else {}
        return _node_info(row, slashed) if row else None

    def list_nodes(self) -> list[NodeStatus]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.nodes).order_by(s.nodes.c.registered_ms)).all()
            slashed = slashing.slashed_by_node(conn)
        return [_node_info(r, slashed) for r in rows]

    def record_rejection(self, address: str, now_ms: int) -> None:
        """Count a refused result (bad signature, someone else's lease, replay) against a node."""
        with self.engine.begin() as conn:
            node_failed(conn, address, now_ms, rejection=True)


def node_failed(conn: Connection, address: str, now_ms: int, *, rejection: bool = False) -> None:
    """A node failed a task or sent a refused result: count it and back the node off."""
    row = conn.execute(select(s.nodes.c.consecutive_failures).where(s.nodes.c.address == address)).first()
    if row is None:
        return
    consecutive = row.consecutive_failures + 1
    values = dict(
        failures=s.nodes.c.failures + 1,
        consecutive_failures=consecutive,
        backoff_until_ms=now_ms + backoff_ms(consecutive),
    )
    if rejection:
        values["rejections"] = s.nodes.c.rejections + 1
    conn.execute(update(s.nodes).where(s.nodes.c.address == address).values(**values))


def _node_info(row: object, slashed: dict[str, int]) -> NodeStatus:
    r = row._mapping  # type: ignore[attr-defined]
    return NodeStatus(
        address=r["address"],
        device_kind=r["device_kind"],
        memory_bytes=r["memory_bytes"],
        last_seen_ms=r["last_seen_ms"],
        draining=bool(r["draining"]),
        completed=r["completed"],
        failures=r["failures"],
        rejections=r["rejections"],
        backoff_until_ms=r["backoff_until_ms"],
        slashed_wei=slashed.get(normalize_address(r["address"]), 0),
    )
