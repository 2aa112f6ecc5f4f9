"""The coordinator's state behind one interface, on SQLite or PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from coordinator.storage import schema
from coordinator.storage.engine import make_engine, normalize_url
from coordinator.storage.jobs import JobStore, NewJob, NewTask
from coordinator.storage.nodes import NodeStore, backoff_ms
from coordinator.storage.results import Outcome, ResultItem, ResultStore
from coordinator.storage.tasks import LeaseTiming, TaskRecord, TaskStore
from coordinator.verification.store import VerificationStore, with_reputation
from tensorgrid.types import NodeStatus


class State(NodeStore, JobStore, TaskStore, ResultStore, VerificationStore):
    """All coordinator state. Methods are synchronous: the api runs them on a DB thread pool."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine: Engine = make_engine(self.url)
        self._started_jobs = set()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def meta_value(self, key: str, default: str) -> str:
        """Read a setting shared by all replicas, storing `default` if none is set yet."""
        with self.engine.begin() as conn:
            row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == key)).first()
            if row is not None:
                return str(row.value)
            try:
                with conn.begin_nested():
                    conn.execute(insert(schema.meta).values(key=key, value=default))
            except IntegrityError:
                return str(conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == key)).one().value)
        return default

    def list_nodes_with_reputation(self) -> list[NodeStatus]:
        return [with_reputation(n, self.reputation(n.address)) for n in self.list_nodes()]

    def close(self) -> None:
        self.engine.dispose()


__all__ = [
    "LeaseTiming",
    "NewJob",
    "NewTask",
    "NodeInfo",
    "Outcome",
    "ResultItem",
    "State",
    "TaskRecord",
    "backoff_ms",
]
