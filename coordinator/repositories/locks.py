"""Row locks taken in one order by every transaction that changes several nodes' and jobs' rows,
so none wait on each other in a circle (PostgreSQL; SQLite locks the whole database per write)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select

from coordinator.db import schema as s


def lock_in_order(conn: Connection, nodes: Iterable[str], jobs: Iterable[str]) -> None:
    """Lock nodes' rows, then jobs' rows, each in key order: the order a batch of results takes
    them in (services/acceptance: its nodes' counters, then its jobs' progress). A transaction
    that changes several of both locks them here first, so no two wait on each other in a
    circle. Key order is bytewise, as Python sorts the batches' keys, whatever collation the
    database has (addresses are mixed-case). SQLite locks the whole database per write
    transaction and ignores this."""
    postgres = conn.dialect.name == "postgresql"
    for key, keys in ((s.nodes.c.address, nodes), (s.jobs.c.job_id, jobs)):
        wanted = sorted(keys)
        if wanted:
            order = key.collate("C") if postgres else key
            conn.execute(select(key).where(key.in_(wanted)).order_by(order).with_for_update()).all()


def lock_free(conn: Connection, nodes: Iterable[str]) -> list[str]:
    """Lock those of the nodes' rows no other transaction holds, in key order, waiting for none;
    returns their addresses (all of them on SQLite, which locks the whole database)."""
    wanted = sorted(nodes)
    if not wanted:
        return []
    key = s.nodes.c.address
    order = key.collate("C") if conn.dialect.name == "postgresql" else key
    stmt = select(key).where(key.in_(wanted)).order_by(order).with_for_update(skip_locked=True)
    return [row.address for row in conn.execute(stmt)]
