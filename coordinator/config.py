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
    referee_time_s: float = 600.0  # wall time of one sandboxed re-execution or replay
    referee_memory_bytes: int = 4 * GiB  # its hard memory cap

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'coordinator.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
