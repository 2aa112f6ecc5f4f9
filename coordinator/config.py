"""Coordinator settings: one frozen value built by the entry point, passed everywhere else.

A leaf: plain dataclasses, importable by every layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class LeaseTiming:
    """ttl: how long a lease lives without a heartbeat; grace: slack beyond the compute limit."""

    ttl_ms: int = 15_000
    grace_ms: int = 30_000


@dataclass(frozen=True)
class Limits:
    max_blob_bytes: int = 64 * GiB
    max_shard_bytes: int = 512 * MiB
    max_output_bytes: int = 4 * GiB
    max_tasks_per_job: int = 100_000


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
    calls_total: int = 4096
    streams_total: int = 1024
    retry_after_ms: int = 1000  # the hint sent with a refusal
    heartbeat_leases: int = 1024  # leases one Heartbeat may list
    result_memory_bytes: int = 64 * MiB  # small outputs held in memory across all calls; beyond: on disk


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = "127.0.0.1:7070"
    data_dir: Path = Path("var/coordinator")
    database_url: str = ""  # default: SQLite file in data_dir
    chain_id: int = 31337
    domain_name: str = "TensorGrid"
    domain_version: str = "1"
    verifying_contract: str = ""  # default: the coordinator's own address (until contracts land)
    heartbeat_interval_ms: int = 5_000
    session_ttl_ms: int = 24 * 3600 * 1000
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    limits: Limits = field(default_factory=Limits)
    reap_interval_ms: int = 1_000
    chain_rpc: str = ""  # empty: no chain; jobs are free and nothing is settled
    deployment: Path | None = None  # the deployments file written by the deploy step
    epoch_interval_ms: int = 30_000  # how often earnings are posted on chain as a Merkle root
    check_wait_ms: int = 30_000  # a check no other node takes within this long passes as unverified
    peers: PeerLimits = field(default_factory=PeerLimits)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'coordinator.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
