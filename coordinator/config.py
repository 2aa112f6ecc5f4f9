"""Coordinator settings: one frozen value built by the entry point, passed everywhere else.

A leaf: plain dataclasses, importable by every layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class LeaseTiming:
    """How leases are granted. ttl: how long a lease lives without a heartbeat; grace: slack
    beyond the compute limit; per_node: the most leases one node holds at once (the node agent
    holds two per slot: the task it runs and one ahead), so a node cannot hoard a job's tasks.
    avoid_failed_ms: after a node fails (or claims) a task, other nodes get the first chance at it
    for this long (repositories.leasing)."""

    ttl_ms: int = 15_000
    grace_ms: int = 30_000
    per_node: int = 64
    avoid_failed_ms: int = 30_000


@dataclass(frozen=True)
class Limits:
    max_blob_bytes: int = 64 * GiB
    max_shard_bytes: int = 512 * MiB
    max_output_bytes: int = 4 * GiB
    max_tasks_per_job: int = 100_000
    # ValidateJob dry runs, and SubmitJob vets in a fresh measured child, at once over all submitters (one each)
    max_validations: int = 2


@dataclass(frozen=True)
class Quotas:
    """What one submitter may keep and send (operator-set defaults, same for every submitter)."""

    stored_bytes: int = 100 * GiB  # blobs it owns (uploaded), counted once per blob
    daily_upload_bytes: int = 200 * GiB  # bytes it sends per UTC day
    open_jobs: int = 100  # jobs queued or running at once


@dataclass(frozen=True)
class SessionLimits:
    """Bounds on sessions (nodes' and submitters') and on failed authentication."""

    max_per_address: int = 32  # the oldest is dropped when one more opens
    failures_per_window: int = 30  # failed authentications a peer host may make per window …
    failure_window_ms: int = 60_000  # … before it is refused until the window passes
    unknown_token_ttl_ms: int = 5_000  # an unknown token is remembered as unknown this long
    purge_interval_ms: int = 60_000  # how often expired sessions leave the cache and the database


@dataclass(frozen=True)
class PeerLimits:
    """What one peer may hold of the coordinator at once, and what everyone may together.

    A peer is a node address once its session is checked, else the caller's IP address (one IP
    may front many users, so its limits are wider). Over a limit a call is refused with
    RESOURCE_EXHAUSTED and a retry hint (api.limits)."""

    calls_per_node: int = 64  # concurrent RPCs of one node (streams included)
    streams_per_node: int = 16  # concurrent streaming RPCs of one node
    calls_per_ip: int = 256  # concurrent RPCs of one IP address, before (or without) a node session
    streams_per_ip: int = 64
    # every connected node nearly always holds one call (its LeaseTasks long poll) and heartbeats
    # beside it: 4096 refused the 4,097th idle node's long poll (benchmarks.fleet at 5,000 nodes)
    calls_total: int = 16384
    streams_total: int = 1024
    retry_after_ms: int = 1000  # the hint sent with a refusal
    heartbeat_leases: int = 1024  # leases one Heartbeat may list
    result_memory_bytes: int = 64 * MiB  # small outputs held in memory across all calls; beyond: on disk


@dataclass(frozen=True)
class BulkSettings:
    """The bulk port (api.bulk): blob bytes beside gRPC, admitted by tickets."""

    listen: str = ""  # host:port; empty: --listen's host on any free port; "off": no bulk port
    ticket_ttl_ms: int = 30_000  # a ticket not used within this long is void
    tickets_per_submitter: int = 16  # open tickets one submitter may hold
    max_transfers: int = 32  # transfers at once, over all peers
    per_ip: int = 8  # transfers at once from one IP address
    hello_timeout_s: float = 10.0  # a connection must present its ticket (and finish TLS) within this
    idle_timeout_s: float = 60.0  # a transfer with no bytes moving for this long is dropped

    @property
    def enabled(self) -> bool:
        return self.listen != "off"


@dataclass(frozen=True)
class ReviewSettings:
    """When the referee's review of contested claims is undecided, and what settles the claims then
    (services.verification.reviews, repositories.claims; bounds: coordinator.settings_reviews)."""

    # a review run in parts may cost the referee this many times the task's own time limit: its CPU
    # may be slower than the nodes the job is for (a digits task: 1.0–1.1× a node worker's time)
    budget_factor: float = 4.0
    # parts of the smallest size (one batch of rows, a training part's one step) that time out in a
    # row before the review is undecided: the referee cannot split the task small enough for a
    # request (one timeout may be a loaded machine; a second, a step too long for the referee's CPU)
    stalls: int = 2
    # further distinct nodes whose claims confirm a task's claims after an undecided review
    quorum: int = 2
    # a claim that the program runs past its task's time limit (repositories.limit_claims, "Over its time
    # limit"): confirmed once the referee's run has taken over_limit × that limit, disproved when the
    # whole run took at most within_limit × it, undecided in between (the referee's CPU, the task's
    # reference, and a loaded machine's noise: too near to tell). The same margins judge a claim that
    # it needs more than its memory limit, against the peak of the referee's measured run
    # (services.verification.memory: a fresh child's baseline is within tens of MiB of a node worker's)
    over_limit: float = 1.25
    within_limit: float = 0.5


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = "127.0.0.1:7070"
    data_dir: Path = Path("var/coordinator")
    database_url: str = ""  # default: SQLite file in data_dir
    chain_id: int = 31337
    domain_name: str = "TensorGrid"
    domain_version: str = "1"
    verifying_contract: str = ""  # default: the coordinator's own address (until contracts land)
    heartbeat_interval_ms: int = 5_000  # nodes holding leases; idle ones: services.pacing
    idle_heartbeats_per_s: float = 250.0  # idle nodes' heartbeats a second the whole grid aims at
    idle_heartbeat_max_ms: int = 20_000  # the longest idle interval (a third of a checker's ACTIVE_MS)
    session_ttl_ms: int = 24 * 3600 * 1000
    dashboard_session_ttl_ms: int = 8 * 3600 * 1000  # a `tensorgrid dashboard` link's read-only session
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    limits: Limits = field(default_factory=Limits)
    reap_interval_ms: int = 1_000
    chain_rpc: str = ""  # empty: no chain; jobs are free and nothing is settled
    deployment: Path | None = None  # the deployments file written by the deploy step
    epoch_interval_ms: int = 30_000  # how often earnings are posted on chain as a Merkle root
    check_wait_ms: int = 30_000  # a check no other node takes within this long passes as unverified
    tls_cert: Path | None = None  # PEM chain served to clients; with tls_key, gRPC is served over TLS
    tls_key: Path | None = None
    insecure: bool = False  # plain text allowed on a non-loopback address
    operator_address: str = ""  # may see and cancel every job and read every blob (empty: nobody)
    quotas: Quotas = field(default_factory=Quotas)
    sessions: SessionLimits = field(default_factory=SessionLimits)
    blob_retention_ms: int = 7 * 24 * 3600 * 1000  # unreferenced blobs older than this are deleted
    retention_interval_ms: int = 600_000  # how often the blob store is swept
    peers: PeerLimits = field(default_factory=PeerLimits)
    referee_time_s: float = 600.0  # wall time of one sandboxed re-execution or replay
    referee_memory_bytes: int = 4 * GiB  # its hard memory cap
    reviews: ReviewSettings = field(default_factory=ReviewSettings)
    bulk: BulkSettings = field(default_factory=BulkSettings)
    metrics_listen: str = ""  # host:port of the Prometheus endpoint; empty: none
    # host:port of the serving data port (services.serving.datalink); empty: none. Plain TCP:
    # never opened where gRPC is served over TLS (replicas then use their Serve streams).
    serve_data_listen: str = ""
    serve_data_max_frame_bytes: int = 64 << 20  # a frame a worker sends up its data link, at most
    dashboard_listen: str = ""  # host:port of the read-only web dashboard (api.dashboard); empty: none
    health_interval_ms: int = 5_000  # how often health checks that the database answers
    gc_sweep_s: float = 600.0  # how often a full collection walks the frozen objects too (services.collector)
    drain_s: float = 1.0  # NOT_SERVING this long before a shutdown stops taking calls
    # the referee child's torch threads: its work is small by design (a check's rows) and shares
    # the machine with the coordinator; several threads on busy cores wait for each other (measured on 2
    # loaded cores: 2 rows of a 22M-parameter encoder in 1.8 s on 2 threads, 0.3 s on 1)
    referee_threads: int = 1
    # "boot": the referee's child starts with the coordinator, warm for the first job's intake
    # probe (seconds of torch's import off a job's path); "first-use": with the first request
    # that needs it (a grid that never runs a stranger's graph never starts one: tests, dev grids)
    referee_start: str = "boot"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'coordinator.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"


KEY_FILE = "coordinator.key"


def key_file(data_dir: Path, env: Mapping[str, str]) -> Path:
    """Where the coordinator's key is: the credential of that name when systemd passes one
    (LoadCredential=coordinator.key:FILE puts it in $CREDENTIALS_DIRECTORY, readable by this
    service alone, never in its state), else data_dir's, made on first start."""
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / KEY_FILE).is_file():
        return Path(credentials) / KEY_FILE
    return data_dir / KEY_FILE
