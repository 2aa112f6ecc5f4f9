"""Job intake: check a signed spec, its blobs and its limits, split it into tasks, store it.

Planning runs on a worker thread (it reads and writes blob files) and is the job kind's
(`Kind.plan`). Everything a submitter can get wrong is caught here, with a message that
says what to change, before any node sees it.

A program whose intake run is measured in a fresh child (kinds/memory.py) is run once per chain
submission: SubmitJob takes the pass its ValidateJob left (intake_passes.MeasuredPasses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.config import Limits, ReviewSettings
from coordinator.errors import Conflict, NotFound, PermissionDenied, QuotaExceeded
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.repositories.store import Store
from coordinator.services.access import Access
from coordinator.services.intake_passes import MeasuredPasses
from coordinator.services.kind import KindLookup
from coordinator.services.ledger import Ledger
from coordinator.services.report import Reports
from coordinator.services.runtime import Runtime
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address, recover_message_signer, submit_message
from tensorgrid.errors import SignatureError
from tensorgrid.spec import job_id_for, parse_spec, spec_hash
from tensorgrid.types import BlobRef, JobInfo

if TYPE_CHECKING:
    from coordinator.services.chain import ChainGate  # web3: loaded only with a chain

log = logging.getLogger("tensorgrid.coordinator")


def authenticate(spec_json: bytes, submitter: str, signature: bytes) -> tuple[str, str, str]:
    """Check the submitter's signature over the spec hash; returns (submitter, spec hash, job id)."""
    try:
        address = normalize_address(submitter)
        signer = recover_message_signer(submit_message(spec_hash(spec_json)), signature)
    except SignatureError as e:
        raise PermissionDenied(f"bad submit signature: {e}") from None
    if signer != address:
        raise PermissionDenied(f"the spec was signed by {signer}, not by the submitter {address}")
    sh = spec_hash(spec_json)
    return address, sh, job_id_for(address, sh)


def plan_job(
    kinds: KindLookup,
    spec_json: bytes,
    submitter: str,
    sh: str,
    job_id: str,
    blobs: BlobStore,
    limits: Limits,
    *,
    measure: bool = True,
) -> tuple[NewJob, list[NewTask]]:
    """Validate the spec (tensorgrid.spec parses it) and let its kind split it into tasks (measure:
    Kind.plan)."""
    spec = parse_spec(spec_json)
    return kinds.for_job(spec.kind).plan(spec, spec_json, submitter, sh, job_id, blobs, limits, measure=measure)


def spec_blobs(spec: object) -> list[BlobRef]:
    """The blobs a spec names (model, inputs, dataset, programs, starting weights)."""
    fields = dataclasses.fields(spec) if dataclasses.is_dataclass(spec) else ()
    return [v for f in fields if isinstance(v := getattr(spec, f.name), BlobRef)]


@dataclass(frozen=True)
class Validated:
    """A spec the coordinator would take: its job id, planned tasks, and the results it may pay
    for (the escrow must hold reward_per_task_wei × paid_tasks). exists: already submitted."""

    job_id: str
    tasks: int
    paid_tasks: int
    exists: bool


class Intake:
    """SubmitJob: authenticate, plan, check the escrow on chain, price and store the job."""

    def __init__(
        self,
        rt: Runtime,
        store: Store,
        blobs: BlobStore,
        limits: Limits,
        kinds: KindLookup,
        reports: Reports,
        ledger: Ledger,
        chain: ChainGate | None,
        access: Access,
    ) -> None:
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self.limits = limits
        self.kinds = kinds
        self.reports = reports
        self.ledger = ledger
        self.chain = chain
        self.access = access
        self._validating: set[str] = set()  # submitters whose validation runs now
        self.passes = MeasuredPasses()  # ValidateJob's measured runs that passed, for the SubmitJob after

    def plan(
        self, spec_json: bytes, submitter: str, sh: str, job_id: str, *, measure: bool = True
    ) -> tuple[NewJob, list[NewTask]]:
        """plan_job with this coordinator's kinds, blobs and limits (blocking)."""
        return plan_job(self.kinds, spec_json, submitter, sh, job_id, self.blobs, self.limits, measure=measure)

    def measured_settings(self) -> str:
        """This coordinator's settings that intake's measured runs are made under (intake_passes):
        the referee's limits (its cap among them), intake's limits, the margin a run is stopped at."""
        return repr((self.rt.sandbox, self.limits, ReviewSettings.over_limit))

    def vet(self, spec_json: bytes) -> None:
        """Run the kind's program checks (the determinism contract) on a planned spec (blocking)."""
        spec = parse_spec(spec_json)
        self.kinds.for_job(spec.kind).vet(spec, self.blobs)

    async def validate(self, spec_json: bytes, submitter_claimed: str, signature: bytes) -> Validated:
        """Everything submit checks but the escrow, storing nothing: the SDK asks before it funds one.

        Planning and vetting run here as in submit (programs loaded in the sandbox, datasets
        read), so at most `max_validations` run at once over all submitters and one per submitter.
        """
        rt = self.rt
        submitter, sh, job_id = authenticate(spec_json, submitter_claimed, signature)
        spec = parse_spec(spec_json)
        try:
            existing = await rt.db(self.store.jobs.get_job, job_id)
        except NotFound:
            existing = None
        if existing is not None:  # a resubmission: nothing to fund again
            planned = existing.tasks_total
            return Validated(job_id, planned, self.kinds.for_job(spec.kind).paid_tasks(spec, planned), True)
        await self.access.check_open_jobs(submitter)
        await self.access.check_spec_blobs(submitter, spec_blobs(spec))
        with self._validation_slot(submitter):
            _, tasks = await rt.work(self.plan, spec_json, submitter, sh, job_id)
            await rt.refereed(self.vet, spec_json)
        if self.kinds.for_job(spec.kind).vet_is_measured(spec):  # passed: SubmitJob need not run it again
            self.passes.add(submitter, sh, self.measured_settings())
        return Validated(job_id, len(tasks), self.kinds.for_job(spec.kind).paid_tasks(spec, len(tasks)), False)

    @contextmanager
    def _validation_slot(self, submitter: str) -> Iterator[None]:
        if submitter in self._validating or len(self._validating) >= self.limits.max_validations:
            raise QuotaExceeded(
                f"{len(self._validating)} job validations are running (at most {self.limits.max_validations}, "
                "one per submitter): try again when yours has finished"
            )
        self._validating.add(submitter)
        try:
            yield
        finally:
            self._validating.discard(submitter)

    def _vet_slot(self, submitter: str, spec: Any) -> contextlib.AbstractContextManager[None]:
        """What submit's plan and vet hold: a validation slot, as ValidateJob's do (one per submitter,
        max_validations in all), when either starts a child of its own (a measured probe, or a
        training job's measured first step: Kind.vet_is_measured), so many submissions cannot queue
        many children; else nothing."""
        if self.kinds.for_job(spec.kind).vet_is_measured(spec):
            return self._validation_slot(submitter)
        return contextlib.nullcontext()

    async def submit(self, spec_json: bytes, submitter_claimed: str, signature: bytes) -> JobInfo:
        rt = self.rt
        submitter, sh, job_id = authenticate(spec_json, submitter_claimed, signature)
        try:
            existing = await rt.db(self.store.jobs.get_job, job_id)  # resubmission: same job
            return await rt.db(self.reports.with_verification, existing)
        except NotFound:
            pass
        spec = parse_spec(spec_json)
        await self.access.check_open_jobs(submitter)
        await self.access.check_spec_blobs(submitter, spec_blobs(spec))
        if self.chain is not None:
            # The escrow is checked before any sharding work: an unfunded job costs us one chain read.
            if spec.reward_per_task_wei <= 0:
                raise Conflict("this coordinator settles on chain: set reward_per_task_wei and fund the escrow")
            await rt.work(
                self.chain.check_escrow, job_id, sh, submitter, spec.reward_per_task_wei, spec.reward_per_task_wei
            )
        if self.kinds.for_job(spec.kind).vet_is_measured(spec) and self.passes.take(
            submitter, sh, self.measured_settings()
        ):  # ValidateJob measured this very spec for this submitter moments ago and it passed
            job, tasks = await rt.work(self.plan, spec_json, submitter, sh, job_id, measure=False)
        else:
            with self._vet_slot(submitter, spec):
                job, tasks = await rt.work(self.plan, spec_json, submitter, sh, job_id)
                await rt.refereed(self.vet, spec_json)  # refused here, before any node runs the program
        if self.chain is not None:
            paid = self.kinds.for_job(spec.kind).paid_tasks(spec, len(tasks))
            budget = await rt.work(
                self.chain.check_escrow, job_id, sh, submitter, job.reward_per_task_wei * paid, job.reward_per_task_wei
            )
            # Priced before the job exists: a crash in between leaves a harmless orphan price,
            # never an unpriced job whose nodes would go unpaid.
            await rt.db(self.ledger.set_job_price, job_id, job.reward_per_task_wei, budget)
        info, created = await rt.db_bulk(self.store.jobs.create_job, job, tasks, rt.now_ms())
        if created:
            rt.hub.work_available(len(tasks))
            log.info("job %s from %s: %s, %d tasks", job_id, submitter, job.kind, len(tasks))
        return await rt.db(self.reports.with_verification, info)
