"""Typed values shared by the SDK, the coordinator and the node. No protobuf here:
conversion to and from the wire lives in tensorgrid.serde."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ErrorKind(enum.StrEnum):
    """Why a task failed on a node; mirrors tensorgrid.v1.ErrorKind."""

    INVALID_INPUT = "invalid_input"
    UNSAFE_INPUT = "unsafe_input"
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"
    EXECUTION = "execution"
    BLOB_UNAVAILABLE = "blob_unavailable"
    CRASHED = "crashed"
    RELEASED = "released"
    # the submitter's program raised while it ran (a node's own faults stay EXECUTION, CRASHED,
    # OUT_OF_MEMORY, TIMEOUT): a workload claim where the referee runs the same device class
    PROGRAM_ERROR = "program_error"


@dataclass(frozen=True)
class TaskError:
    kind: ErrorKind
    message: str


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Capabilities:
    """What a node offers. memory_bytes is what a task may use: GPU memory on cuda, RAM on cpu."""

    device_kind: str  # "cpu" | "cuda"
    memory_bytes: int
    cpu_cores: int
    gpus: tuple[Gpu, ...] = ()
    max_concurrent: int = 1
    torch_version: str = ""


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain receipts are signed under."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str


@dataclass(frozen=True)
class Receipt:
    """What a node signs for a result. Hashes are lowercase hex without 0x; ids are 64 hex chars."""

    job_id: str
    task_id: str
    attempt: int
    input_hash: str
    output_hash: str
    commitment: str = "0" * 64
    signature: bytes = b""


@dataclass(frozen=True)
class Lease:
    """A task granted to one node until deadline_ms."""

    job_id: str
    task_id: str
    attempt: int
    deadline_ms: int
    kind: str
    model: BlobRef | None
    input: BlobRef
    settings: dict[str, object] = field(default_factory=dict)
    memory_limit_bytes: int = 0
    time_limit_ms: int = 0
    index: int = 0  # the task's position in its job
    rows: int = 0  # input rows (inference); known to the coordinator, not sent on the wire


@dataclass(frozen=True)
class JobVerification:
    """How a job's results are verified, and what that found (see VerificationSpec)."""

    mode: str  # spotcheck | replicate | none
    checks: dict[str, int] = field(default_factory=dict)  # "kind:outcome" -> count
    detection: float = 0.0  # per-job chance of catching a cheater, worst case (most trusted node)
    required_stake_wei: int = 0
    slashes: int = 0  # confirmed on-chain slashes of nodes caught on this job
    slashed_wei: int = 0
    fee_budget_wei: int = 0  # the escrow's verification fee: what its checkers and decoys may win (fee_tasks)
    fee_paid_wei: int = 0  # what checkers proven right and decoys have won of it so far
    decoys: int = 0  # tasks of a check's m rows carved out of the shards (tasks_total counts them)
    decoys_drawn: int = 0  # decoys whose pay by rows has been drawn
    decoy_paid_wei: int = 0  # what the decoys won (part of fee_paid_wei)
    claims_drawn: int = 0  # failure claims a failed run of the referee proved, drawn for their pay by work
    claims_paid_wei: int = 0  # what those claimants were credited (from the escrow, not the fee)

    def count(self, outcome: str) -> int:
        """Checks of any kind that ended in `outcome` (verified, caught, unverified, open, …)."""
        return sum(n for key, n in self.checks.items() if key.rpartition(":")[2] == outcome)

    @property
    def total(self) -> int:
        return sum(self.checks.values())


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    submitter: str
    kind: str
    state: JobState
    spec_json: bytes
    spec_hash: str
    created_ms: int
    updated_ms: int
    tasks_total: int
    tasks_done: int
    task_failures: int
    result: BlobRef | None
    error: str
    verification: JobVerification | None = None  # set on replies about one job


@dataclass(frozen=True)
class JobEvent:
    seq: int
    job_id: str
    kind: str
    time_ms: int
    task_index: int = 0
    node: str = ""
    message: str = ""
    tasks_done: int = 0
    tasks_total: int = 0
    state: JobState = JobState.QUEUED


@dataclass(frozen=True)
class NodeStatus:
    """A node as the coordinator sees it: its offer and its record."""

    address: str
    device_kind: str
    memory_bytes: int
    last_seen_ms: int
    draining: bool
    completed: int
    failures: int
    rejections: int
    backoff_until_ms: int
    consecutive_valid: int = 0  # verified results since the last one caught
    verified: int = 0  # results that passed a spot-check, canary or quorum
    caught: int = 0  # results (or checks) proven wrong by a quorum
    slashed_wei: int = 0  # stake taken on chain by confirmed slashes


@dataclass(frozen=True)
class Earnings:
    """What a node has earned (wei) and, once posted on chain, how to claim it."""

    address: str
    cumulative_wei: int
    pending_wei: int
    claim_epoch: int = 0
    claim_cumulative_wei: int = 0
    claim_proof: list[bytes] = field(default_factory=list)
    slashed_wei: int = 0  # stake taken on chain by confirmed slashes


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica of an endpoint: the node holding it, its state and load."""

    replica_id: str
    node: str
    state: str  # assigned (warming), ready, draining
    in_flight: int = 0
    served: int = 0


@dataclass(frozen=True)
class EndpointStatus:
    """An endpoint as its coordinator sees it now (docs/SERVING.md). Latencies are the
    coordinator's, over the last minute; counts since the endpoint was created."""

    endpoint_id: str
    state: str  # running, deleted, spent
    serves: str  # inference or generation
    min_replicas: int
    max_replicas: int
    replicas: list[ReplicaStatus] = field(default_factory=list)
    requests_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    checked: int = 0
    caught: int = 0
    spent_wei: int = 0
    price_wei: int = 0
    max_requests: int = 0
    created_ms: int = 0
    queued: int = 0

    @property
    def ready(self) -> int:
        """Replicas ready to answer."""
        return sum(1 for r in self.replicas if r.state == "ready")
