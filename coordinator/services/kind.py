"""What a job kind declares, seen from the services: they take kinds through `KindLookup`,
injected by the composition root, and never import a kind package.

A kind (coordinator/kinds/<name>/) says, in one package: which spec it takes (tensorgrid's
spec classes parse and validate it), how a job is planned into tasks, how a result is
checked, what accepting a result does (credits, checks, audits: an `Effect`), how the job's
result is assembled, and how its report reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection

from coordinator.config import Limits
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.repositories.results import Claimed
from coordinator.repositories.tasks import TaskRecord
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import BlobRef, JobInfo, Receipt


class Effect(Protocol):
    """What accepting one result does besides the generic part, in the accepting transaction."""

    @property
    def pays_now(self) -> bool:
        """True: credit the node now. False: it is paid later (when its check or audit passes) or never."""

    @property
    def counts_progress(self) -> bool:
        """False for a result that completes no task of its job (a check task's result)."""

    @property
    def reveal_steps(self) -> tuple[int, ...]:
        """What the node is asked to reveal next (training checkpoints an audit wants); usually ()."""

    def apply(self, conn: Connection, claimed: Claimed, now_ms: int) -> None:
        """Write the effect in the caller's transaction."""

    def committed(self) -> None:
        """The transaction committed: wake whoever acts on the effect (cheap, never blocks)."""


class Kind(Protocol):
    name: str  # the job kind, as in the spec and the jobs table
    task_kinds: tuple[str, ...]  # kinds of the tasks its jobs have in the tasks table
    assembles: bool  # False: the kind finishes its jobs itself (training's last round)
    checks_output: bool  # False: outputs are taken as they are (check_output is not called: no thread hop)
    reviews_claims: bool  # the referee can run its tasks, so it reviews claims that their input is bad

    def plan(
        self,
        spec: Any,
        spec_json: bytes,
        submitter: str,
        sh: str,
        job_id: str,
        blobs: BlobStore,
        limits: Limits,
        *,
        measure: bool = True,
    ) -> tuple[NewJob, list[NewTask]]:
        """Validate a parsed spec against the stored blobs and split it into tasks (blocking).
        measure False: intake holds a pass of this very spec's measured run (services.intake_passes),
        so a plan that makes one (training's first inner step) leaves it out."""

    def vet(self, spec: Any, blobs: BlobStore) -> None:
        """After plan: checks that run the job's program on sample rows (blocking). Raises SpecError."""

    def vet_is_measured(self, spec: Any) -> bool:
        """Whether plan or vet runs the program in a fresh child of its own, measured (not only in
        the referee's warm one): intake holds one of its validation slots for the submitter over both."""

    def paid_tasks(self, spec: Any, planned: int) -> int:
        """Results the job may pay for at most, given the `planned` tasks: its escrow is reward × this."""

    def check_output(self, task: TaskRecord, receipt: Receipt, path: Path) -> int | None:
        """Structural check of a received output (blocking); the rows its task must have, or None.
        Raises Rejected."""

    async def examine(self, task: TaskRecord, node: str, output: BlobRef) -> Effect | None:
        """What accepting this result will do; None: only the generic part, and it is paid now."""

    async def still_wanted(self, task: TaskRecord, node: str, output_sha: str) -> tuple[int, ...]:
        """`node` hands in again the result (`output_sha`) it already delivered for `task`: its
        answer was lost (the replica that committed it died, or the node's deadline ran out as the
        commit went through). What that answer asked of the node that it still owes (a training
        audit's checkpoint steps), to be answered again; (): nothing, the repeat is refused."""

    def assemble(self, outputs: list[BlobRef], blobs: BlobStore) -> BlobRef:
        """The job's one result from its tasks' outputs, in task order (blocking)."""

    def after_accept(self, job_ids: Iterable[str]) -> None:
        """Results of these jobs were accepted (also called once with none at start). Never blocks."""

    def detection(self, job: JobInfo, policy: VerificationSpec) -> float:
        """The report's worst-case per-job detection probability under `policy`."""

    def audits(self, job: JobInfo) -> tuple[VerificationSpec, dict[str, int]] | None:
        """For a kind that checks results itself (training audits): its policy and "kind:outcome"
        counts for the report; None: the report reads the generic checks (blocking)."""


class KindLookup(Protocol):
    """The registry as services see it."""

    def for_job(self, kind: str) -> Kind: ...

    def for_task(self, task_kind: str) -> Kind: ...

    def __iter__(self) -> Iterator[Kind]: ...
