"""The composition root: builds the repositories, the runtime, the services and the job kinds,
wires them together and starts the background loops. Nothing else builds them."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.config import CoordinatorConfig, key_file
from coordinator.kinds.registry import KindContext, build_kinds
from coordinator.kinds.training import TrainingKind
from coordinator.repositories.store import Store
from coordinator.services.acceptance import Acceptance
from coordinator.services.access import Access
from coordinator.services.aggregation import Aggregation
from coordinator.services.blobs import MemoryBudget
from coordinator.services.intake import Intake
from coordinator.services.ledger import Ledger
from coordinator.services.metrics import Metrics
from coordinator.services.pacing import HeartbeatPacing
from coordinator.services.report import Reports
from coordinator.services.retention import retention_loop
from coordinator.services.runtime import REFEREE_NICE, REFEREE_START_S, Runtime
from coordinator.services.scheduler import Scheduler
from coordinator.services.serving.accounting import Accounting
from coordinator.services.serving.batches import counted_key
from coordinator.services.serving.checks import Checks
from coordinator.services.serving.router import Router
from coordinator.services.serving.service import Serving
from coordinator.services.verification.manager import Verification
from coordinator.services.verifier import Verifier
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import load_or_create_key_file
from tensorgrid.errors import TensorGridError
from tensorgrid.sandbox import SandboxLimits
from tensorgrid.types import Domain

if TYPE_CHECKING:
    from coordinator.services.chain import ChainGate

log = logging.getLogger("tensorgrid.coordinator")
AGGREGATION_SWEEP_S = 5.0


def referee_limits(config: CoordinatorConfig) -> SandboxLimits:
    """What the coordinator's sandboxed referee may use, at a lower CPU priority than its own."""
    return SandboxLimits(
        memory_bytes=config.referee_memory_bytes,
        time_s=config.referee_time_s,
        threads=config.referee_threads,
        nice=REFEREE_NICE,
        start_timeout_s=REFEREE_START_S,
    )


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = store = Store(config.db_url, config.reviews)
        self.blobs = blobs = BlobStore(config.blob_dir, config.limits.max_blob_bytes)
        key_path = key_file(config.data_dir, os.environ)
        self.identity, _ = load_or_create_key_file(key_path)
        log.info("coordinator key %s (address %s)", key_path, self.identity.address)
        self._check_replica_key(key_path)
        self.chain = self._chain_gate()
        self.domain = self.chain.deployment.domain if self.chain is not None else self._own_domain()
        self.runtime = rt = Runtime(
            inline_db=store.is_sqlite,
            db_threads=1 if store.is_sqlite else 8,
            sandbox=referee_limits(config),
        )
        self.hub = rt.hub
        self.metrics = Metrics()
        # idle nodes beat less often than nodes holding leases (services.pacing): three of their beats
        live_window_ms = 3 * max(config.heartbeat_interval_ms, config.idle_heartbeat_max_ms)
        self.metrics.watch_database(store.engine, live_window_ms, rt.now_ms)
        self.ledger = Ledger(store.engine)
        self.outbox = self.ledger.outbox(self.chain.client) if self.chain is not None else None
        self._stopping = asyncio.Event()
        self.challenge_secret = bytes.fromhex(store.meta_value("challenge_secret", secrets.token_hex(32)))
        verification_secret = bytes.fromhex(store.meta_value("verification_secret", secrets.token_hex(32)))
        stake_of = self.chain.client.stake_of if self.chain is not None else None
        self.verification = Verification(rt, store, blobs, verification_secret, stake_of, config.reviews)
        self.kinds = build_kinds(KindContext(rt, store, blobs, self.verification))
        store.tasks.reviewed = frozenset(t for k in self.kinds if k.reviews_claims for t in k.task_kinds)
        # the task kinds whose memory the referee measures: a node's out-of-memory report on one is a claim
        reviews = self.verification.reviews
        store.tasks.measured = frozenset(reviews.measures) | frozenset(reviews.measured_parts)
        store.reviews.goes_on = frozenset(t for k in self.kinds if not k.assembles for t in k.task_kinds)
        training = self.kinds.for_job(TrainingKind.name)
        assert isinstance(training, TrainingKind)
        self.rounds = training.rounds  # RevealCheckpoint is training's: the api hands reveals to its auditor
        stakes = self.verification.stakes  # None without a chain: nobody is barred
        self.scheduler: Scheduler = Scheduler(
            rt,
            store,
            config.timing,
            barred=stakes.barred_jobs if stakes is not None else None,
            before_lease=stakes.refresh if stakes is not None else None,
            on_granted=self.verification.leased,
            check_wait_ms=config.check_wait_ms,
            pacing=HeartbeatPacing(
                config.heartbeat_interval_ms, config.idle_heartbeats_per_s, config.idle_heartbeat_max_ms
            ),
        )
        self.aggregation: Aggregation = Aggregation(rt, store.jobs, blobs, self.kinds)
        verifier = Verifier(self.domain)
        self.acceptance: Acceptance = Acceptance(
            rt, store.engine, store.tasks, self.scheduler, verifier, self.kinds, blobs, config.limits, self.aggregation,
            MemoryBudget(config.peers.result_memory_bytes),
        )  # fmt: skip
        self.reports = Reports(store, self.kinds)
        self.access = Access(rt, store, config.quotas, config.operator_address)
        self.intake = Intake(
            rt, store, blobs, config.limits, self.kinds, self.reports, self.ledger, self.chain, self.access
        )
        # Endpoints: requests routed in memory, paid in batches, a sampled share checked again.
        accounting = Accounting(rt, store.engine)
        checks = Checks(
            rt, store, blobs, verification_secret, accounting,
            lambda *a: self.router.rerun(*a), lambda batch, why: self.router.on_caught(batch, why),
        )  # fmt: skip
        self.router = Router(
            self.domain, accounting, checks, metrics=self.metrics.serving, counted_key=counted_key(verification_secret)
        )
        self.metrics.watch_serving(self.router)
        self.serving = Serving(rt, store, self.router, self.ledger.result_withheld if self.chain is not None else None)

    def _check_replica_key(self, key_path: Path) -> None:
        """Replicas behind one database are one coordinator: the same key signs its chain writes
        (the outbox's nonces are that account's) and, off chain, names the EIP-712 domain nodes sign
        under. A replica started with another key would burn nonces of the wrong account and refuse
        every receipt signed for its peer, so it stops here instead."""
        first = self.store.meta_value("coordinator_address", self.identity.address)
        if first.lower() != self.identity.address.lower():
            raise TensorGridError(
                f"this database belongs to coordinator {first}, but this replica's key ({key_path}) is "
                f"{self.identity.address}: replicas behind one database must share coordinator.key "
                "(a shared --data-dir, or the same credential)"
            )

    def _chain_gate(self) -> ChainGate | None:
        if not self.config.chain_rpc:
            return None
        if self.config.deployment is None:
            raise TensorGridError("--chain-rpc needs --deployment (the file the deploy step wrote)")
        from coordinator.services.chain import ChainGate  # web3 loads only on a chain-settled grid

        return ChainGate.open(self.config.chain_rpc, self.config.deployment, self.identity)  # receipts are evidence

    def _own_domain(self) -> Domain:
        c = self.config
        return Domain(c.domain_name, c.domain_version, c.chain_id, c.verifying_contract or self.identity.address)

    async def start(self) -> None:
        """Start background loops and finish what a previous run left half done."""
        rt = self.runtime
        rt.spawn(self.scheduler.reap_loop(self.config.reap_interval_ms / 1000, self.aggregation.schedule))
        rt.spawn(self.metrics.watch_loop())
        alive = self.store.nodes.count_alive
        # a scan of the nodes table every few seconds: on the DB thread, never inline on the loop
        rt.spawn(self.scheduler.pacing.follow(lambda horizon_ms: rt.db_bulk(alive, rt.now_ms() - horizon_ms)))
        rt.spawn(self.metrics.watch_gc())
        rt.spawn(self.verification.run_referee(self._after_ruling, warm=self.config.referee_start == "boot"))
        c = self.config
        rt.spawn(
            retention_loop(rt, self.blobs, self.store.blob_access, c.blob_retention_ms, c.retention_interval_ms / 1000)
        )
        if self.outbox is not None:
            rt.spawn(self.outbox.run(self._stopping))
            rt.spawn(self.ledger.settle_loop(rt, self.config.epoch_interval_ms / 1000))
        await self.aggregation.resume()
        rt.spawn(self.aggregation.sweep_loop(AGGREGATION_SWEEP_S))  # what a dead replica left unassembled
        served = await self.serving.load()
        if served:
            log.info("serving %d endpoints", served)
        rt.spawn(self.serving.run(self._stopping))
        for kind in self.kinds:
            kind.after_accept(())  # e.g. training jobs resume and round deadlines are watched

    def _after_ruling(self, job_id: str, complete: bool) -> None:
        self.hub.work_available()  # a caught result is pending again, or a tiebreak opened
        self.hub.notify(job_id)
        if complete:
            self.aggregation.schedule(job_id)

    async def stop(self) -> None:
        self._stopping.set()
        committers = (("lease", self.scheduler.leases), ("result", self.acceptance.results))
        for name, committer in committers:
            if committer.batches:
                log.info(
                    "%s group commits: %d requests in %d transactions", name, committer.requests, committer.batches
                )
        await self.runtime.stop()
        if self.outbox is not None:
            self.outbox.close()
        self.runtime.shutdown()
        self.store.close()
