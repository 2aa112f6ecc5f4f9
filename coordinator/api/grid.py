"""What the servicers need of the coordinator: its services, named. The composition root
(coordinator.app) provides them; the api never imports it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from coordinator.config import CoordinatorConfig
from coordinator.repositories.store import Store
from coordinator.services.acceptance import Acceptance
from coordinator.services.access import Access
from coordinator.services.intake import Intake
from coordinator.services.ledger import Ledger
from coordinator.services.metrics import Metrics
from coordinator.services.report import Reports
from coordinator.services.runtime import Runtime
from coordinator.services.scheduler import Scheduler
from coordinator.services.serving.service import Serving
from tensorgrid.blobs import BlobStore
from tensorgrid.types import BlobRef, Domain

if TYPE_CHECKING:
    from coordinator.services.chain import ChainGate  # web3: loaded only with a chain


class Reveals(Protocol):
    async def receive(
        self, node: str, task_id: str, attempt: int, step: int, ref: BlobRef, data: AsyncIterator[bytes], now_ms: int
    ) -> None: ...


class Rounds(Protocol):
    @property
    def audits(self) -> Reveals: ...


class Grid(Protocol):
    config: CoordinatorConfig
    domain: Domain
    challenge_secret: bytes
    chain: ChainGate | None
    store: Store
    blobs: BlobStore
    runtime: Runtime
    scheduler: Scheduler
    acceptance: Acceptance
    intake: Intake
    reports: Reports
    ledger: Ledger
    access: Access
    metrics: Metrics
    serving: Serving

    @property
    def rounds(self) -> Rounds: ...
