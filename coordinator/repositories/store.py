"""The coordinator's repositories over one database, built together from its URL.

Not a facade: each domain keeps its own repository (`store.jobs`, `store.tasks`, …) and
callers name the one they mean. Services that need several in one transaction pass a
Connection to the repositories' module functions instead.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from coordinator.config import ReviewSettings
from coordinator.db import kept
from coordinator.db.engine import is_sqlite, make_engine, meta_value, normalize_url
from coordinator.repositories.blobs import BlobAccessRepository
from coordinator.repositories.jobs import JobRepository
from coordinator.repositories.nodes import NodeRepository
from coordinator.repositories.reviews import ReviewRepository
from coordinator.repositories.sessions import SessionRepository
from coordinator.repositories.tasks import TaskRepository
from coordinator.repositories.verification.store import (
    Reputation,
    VerificationRepository,
    reputations,
    with_reputation,
)
from tensorgrid.types import NodeStatus


class Store:
    """Every repository on one engine. Methods are synchronous: the runtime runs them off the loop."""

    def __init__(self, url: str, reviews: ReviewSettings | None = None) -> None:
        """reviews: the coordinator's --review-* and --undecided-quorum settings (default: their defaults)."""
        self.url = normalize_url(url)
        self.engine: Engine = make_engine(self.url)
        quorum = (reviews or ReviewSettings()).quorum
        self.jobs = JobRepository(self.engine)
        self.tasks = TaskRepository(self.engine, quorum)
        self.reviews = ReviewRepository(self.engine, quorum)
        self.nodes = NodeRepository(self.engine)
        self.verification = VerificationRepository(self.engine)
        self.sessions = SessionRepository(self.engine)
        self.blob_access = BlobAccessRepository(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine)

    def meta_value(self, key: str, default: str) -> str:
        """A setting shared by all replicas (stored as `default` if none is set yet)."""
        return meta_value(self.engine, key, default)

    def list_nodes_with_reputation(self) -> list[NodeStatus]:
        nodes = self.nodes.list_nodes()
        with self.engine.connect() as conn:
            reps = reputations(conn)
        return [with_reputation(n, reps.get(n.address, Reputation())) for n in nodes]

    def ping(self) -> None:
        """One round trip to the database; raises if it cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        kept.close(self.engine)
        self.engine.dispose()
