"""The coordinator's settings: each flag with its variable, its --config file key and its default
(CoordinatorConfig's own, in the flag's units), and the CoordinatorConfig they make.

Read by the entry point only (coordinator.main); tensorgrid.config resolves them."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from coordinator.config import CoordinatorConfig, LeaseTiming, Limits, Quotas
from coordinator.settings_network import (
    BULK_HELLO_S,
    BULK_IDLE_S,
    BULK_LISTEN,
    DASHBOARD_LISTEN,
    DRAIN_S,
    HEALTH_INTERVAL_MS,
    INSECURE,
    LISTEN,
    METRICS_LISTEN,
    SERVE_DATA_LISTEN,
    SERVE_DATA_MAX_FRAME_MIB,
    TLS_CERT,
    TLS_KEY,
    bulk_settings,
)
from coordinator.settings_peers import PEER_SETTINGS, SESSION_SETTINGS, peer_limits, session_ttls
from coordinator.settings_reviews import REVIEW_SETTINGS, review_settings
from tensorgrid import config
from tensorgrid.config import Setting
from tensorgrid.crypto import normalize_address
from tensorgrid.errors import SignatureError, TensorGridError

MiB = 1 << 20
GiB = 1 << 30
ENV_PREFIX = _COORDINATOR = "TENSORGRID_COORDINATOR_"
# Each default is CoordinatorConfig's own (or its Limits' and LeaseTiming's), shown in the units of the flag.
# Where and how the coordinator serves: coordinator.settings_network.
DATA_DIR = Setting(
    "--data-dir",
    _COORDINATOR + "DATA_DIR",
    CoordinatorConfig.data_dir,
    type=Path,
    help="blob store, SQLite file and the coordinator key live here",
    metavar="DIR",
)
DATABASE_URL = Setting(
    "--database-url",
    "TENSORGRID_DATABASE_URL",
    CoordinatorConfig.database_url,
    help="SQLAlchemy URL; none: SQLite in --data-dir. PostgreSQL: postgresql://user:password@host:5432/dbname",
    metavar="URL",
    secret="password",
)
CHAIN_ID = Setting(
    "--chain-id",
    _COORDINATOR + "CHAIN_ID",
    CoordinatorConfig.chain_id,
    type=int,
    help="EIP-712 chain id receipts are signed for",
)
HEARTBEAT_MS = Setting(
    "--heartbeat-ms",
    _COORDINATOR + "HEARTBEAT_MS",
    CoordinatorConfig.heartbeat_interval_ms,
    type=int,
    help="how often nodes holding leases should heartbeat (idle ones: less often as more connect, up to 20 s)",
)
IDLE_HEARTBEATS_PER_S = Setting(
    "--idle-heartbeats-per-s",
    _COORDINATOR + "IDLE_HEARTBEATS_PER_S",
    CoordinatorConfig.idle_heartbeats_per_s,
    type=float,
    help="idle nodes' heartbeats a second the whole grid aims at (every replica together): an idle node's "
    "interval is the nodes alive at any replica over this, within --heartbeat-ms and 20 s (0: --heartbeat-ms)",
)
GC_SWEEP_S = Setting(
    "--gc-sweep-s",
    _COORDINATOR + "GC_SWEEP_S",
    CoordinatorConfig.gc_sweep_s,
    type=float,
    help="how often one full garbage collection looks at every object, frozen ones too (each one stops "
    "the coordinator: at 5,000 idle nodes see docs/BENCHMARKS.md, fleet)",
)
LEASE_TTL_MS = Setting(
    "--lease-ttl-ms",
    _COORDINATOR + "LEASE_TTL_MS",
    LeaseTiming.ttl_ms,
    type=int,
    help="a lease without a heartbeat for this long is reissued to another node",
)
NODE_LEASES = Setting(
    "--max-node-leases",
    _COORDINATOR + "MAX_NODE_LEASES",
    LeaseTiming.per_node,
    type=int,
    help="leases one node may hold at once; beyond it a node is granted none until it hands results in "
    "(the node daemon holds two per slot)",
)
AVOID_FAILED_MS = Setting(
    "--avoid-failed-node-ms",
    _COORDINATOR + "AVOID_FAILED_NODE_MS",
    LeaseTiming.avoid_failed_ms,
    type=int,
    help="after a node fails or refuses a task, other nodes get the first chance at it for this long",
)
MAX_SHARD_MIB = Setting(
    "--max-shard-mib",
    _COORDINATOR + "MAX_SHARD_MIB",
    Limits.max_shard_bytes / MiB,
    type=float,
    help="largest input shard a job may ask for",
)
MAX_BLOB_MIB = Setting(
    "--max-blob-mib",
    _COORDINATOR + "MAX_BLOB_MIB",
    Limits.max_blob_bytes / MiB,
    type=float,
    help="largest blob a submitter may upload",
)
EPOCH_SECONDS = Setting(
    "--epoch-seconds",
    _COORDINATOR + "EPOCH_SECONDS",
    CoordinatorConfig.epoch_interval_ms / 1000,
    type=float,
    help="how often earnings are posted on chain",
)
CHECK_WAIT_MS = Setting(
    "--check-wait-ms",
    _COORDINATOR + "CHECK_WAIT_MS",
    CoordinatorConfig.check_wait_ms,
    type=int,
    help="a spot-check no other node takes within this long passes as 'unverified' (grids of one node)",
)
OPERATOR_ADDRESS = Setting(
    "--operator-address",
    _COORDINATOR + "OPERATOR_ADDRESS",
    CoordinatorConfig.operator_address,
    help="an address that may see and cancel every job and download every blob (its own session)",
    metavar="0x…",
)
QUOTA_STORED_GIB = Setting(
    "--quota-stored-gib",
    _COORDINATOR + "QUOTA_STORED_GIB",
    Quotas.stored_bytes / GiB,
    type=float,
    help="bytes of uploaded blobs one submitter may keep",
)
QUOTA_DAILY_GIB = Setting(
    "--quota-daily-gib",
    _COORDINATOR + "QUOTA_DAILY_GIB",
    Quotas.daily_upload_bytes / GiB,
    type=float,
    help="bytes one submitter may upload per UTC day",
)
QUOTA_OPEN_JOBS = Setting(
    "--quota-open-jobs",
    _COORDINATOR + "QUOTA_OPEN_JOBS",
    Quotas.open_jobs,
    type=int,
    help="jobs one submitter may have queued or running at once",
)
BLOB_RETENTION = Setting(
    "--blob-retention",
    _COORDINATOR + "BLOB_RETENTION",
    "7d",
    help="blobs no live job references are deleted this long after their last use (e.g. 12h, 7d, 90m)",
    metavar="DURATION",
)
REFEREE_TIME_S = Setting(
    "--referee-time-s",
    _COORDINATOR + "REFEREE_TIME_S",
    CoordinatorConfig.referee_time_s,
    type=float,
    help="wall time of one sandboxed re-execution or training replay; over it, the check blames no one",
)
REFEREE_MEMORY_MIB = Setting(
    "--referee-memory-mib",
    _COORDINATOR + "REFEREE_MEMORY_MIB",
    CoordinatorConfig.referee_memory_bytes / MiB,
    type=float,
    help="hard memory cap of that sandboxed child",
)
REFEREE_THREADS = Setting(
    "--referee-threads",
    _COORDINATOR + "REFEREE_THREADS",
    CoordinatorConfig.referee_threads,
    type=int,
    help="torch threads of that sandboxed child; 0: torch's default (one per core)",
)
REFEREE_START = Setting(
    "--referee-start",
    _COORDINATOR + "REFEREE_START",
    CoordinatorConfig.referee_start,
    choices=("boot", "first-use"),
    help="when that sandboxed child starts: with the coordinator (warm for the first job) or with the "
    "first request that needs it (a grid that never runs a model never starts it)",
)
CONFIG = config.config_setting(_COORDINATOR + "CONFIG", "tensorgrid-coordinator")
READY_FILE = Setting(
    "--ready-file",
    _COORDINATOR + "READY_FILE",
    None,
    type=Path,
    help="write the bound port here once serving (for scripts)",
    metavar="FILE",
)
VERBOSE = Setting(
    "--verbose",
    _COORDINATOR + "VERBOSE",
    False,
    type=config.switch,
    help="log at DEBUG level",
    aliases=("-v",),
)
LOG_FORMAT = replace(config.LOG_FORMAT, env=_COORDINATOR + "LOG_FORMAT")
# What `db upgrade` and `db current` need: where the database is.
DATABASE = (DATA_DIR, DATABASE_URL, VERBOSE, LOG_FORMAT)
SETTINGS = (
    LISTEN,
    HEALTH_INTERVAL_MS,
    DRAIN_S,
    GC_SWEEP_S,
    METRICS_LISTEN,
    SERVE_DATA_LISTEN,
    SERVE_DATA_MAX_FRAME_MIB,
    DASHBOARD_LISTEN,
    *SESSION_SETTINGS,
    BULK_LISTEN,
    BULK_HELLO_S,
    BULK_IDLE_S,
    TLS_CERT,
    TLS_KEY,
    INSECURE,
    DATA_DIR,
    DATABASE_URL,
    CHAIN_ID,
    HEARTBEAT_MS,
    IDLE_HEARTBEATS_PER_S,
    LEASE_TTL_MS,
    NODE_LEASES,
    AVOID_FAILED_MS,
    MAX_SHARD_MIB,
    MAX_BLOB_MIB,
    config.CHAIN_RPC,
    config.DEPLOYMENT,
    EPOCH_SECONDS,
    CHECK_WAIT_MS,
    OPERATOR_ADDRESS,
    QUOTA_STORED_GIB,
    QUOTA_DAILY_GIB,
    QUOTA_OPEN_JOBS,
    BLOB_RETENTION,
    *PEER_SETTINGS,
    REFEREE_TIME_S,
    REFEREE_MEMORY_MIB,
    REFEREE_THREADS,
    REFEREE_START,
    *REVIEW_SETTINGS,
    config.SANDBOX_ZYGOTE,
    config.OWNER,
    READY_FILE,
    VERBOSE,
    LOG_FORMAT,
)


def config_from(ns: argparse.Namespace) -> CoordinatorConfig:
    """The configuration the parsed settings describe; TensorGridError when they disagree."""
    if ns.lease_ttl_ms < 2 * ns.heartbeat_ms:
        raise TensorGridError("--lease-ttl-ms must be at least twice --heartbeat-ms, or live nodes lose leases")
    if ns.idle_heartbeats_per_s < 0 or not ns.gc_sweep_s > 0:
        raise TensorGridError(
            f"--idle-heartbeats-per-s must be at least 0 and --gc-sweep-s above 0: "
            f"{ns.idle_heartbeats_per_s}, {ns.gc_sweep_s}"
        )
    if ns.avoid_failed_node_ms < 0:
        raise TensorGridError(f"--avoid-failed-node-ms must be at least 0: {ns.avoid_failed_node_ms}")
    if ns.max_node_leases < 1:
        raise TensorGridError(f"--max-node-leases must be at least 1 (a node holds two per slot): {ns.max_node_leases}")
    if not ns.referee_time_s > 0 or not ns.referee_memory_mib > 0:  # 0 would leave a stranger's run unbounded
        raise TensorGridError(
            f"--referee-time-s and --referee-memory-mib must be above 0: {ns.referee_time_s}, {ns.referee_memory_mib}"
        )
    operator = ""
    if ns.operator_address:
        try:
            operator = normalize_address(ns.operator_address)
        except SignatureError as e:
            raise TensorGridError(f"--operator-address: {e}") from None
    session_ms, dashboard_session_ms = session_ttls(ns)
    quotas = Quotas(
        stored_bytes=int(ns.quota_stored_gib * GiB),
        daily_upload_bytes=int(ns.quota_daily_gib * GiB),
        open_jobs=ns.quota_open_jobs,
    )
    return CoordinatorConfig(
        operator_address=operator,
        quotas=quotas,
        blob_retention_ms=config.duration_ms(ns.blob_retention),
        session_ttl_ms=session_ms,
        dashboard_session_ttl_ms=dashboard_session_ms,
        listen=ns.listen,
        data_dir=ns.data_dir,
        database_url=ns.database_url,
        chain_id=ns.chain_id,
        chain_rpc=ns.chain_rpc,
        deployment=ns.deployment,
        epoch_interval_ms=int(ns.epoch_seconds * 1000),
        heartbeat_interval_ms=ns.heartbeat_ms,
        idle_heartbeats_per_s=ns.idle_heartbeats_per_s,
        gc_sweep_s=ns.gc_sweep_s,
        check_wait_ms=ns.check_wait_ms,
        tls_cert=ns.tls_cert,
        tls_key=ns.tls_key,
        insecure=ns.insecure,
        referee_time_s=ns.referee_time_s,
        referee_memory_bytes=int(ns.referee_memory_mib * MiB),
        referee_threads=ns.referee_threads,
        referee_start=ns.referee_start,
        reviews=review_settings(ns),
        timing=LeaseTiming(
            ttl_ms=ns.lease_ttl_ms, per_node=ns.max_node_leases, avoid_failed_ms=ns.avoid_failed_node_ms
        ),
        limits=Limits(max_shard_bytes=int(ns.max_shard_mib * MiB), max_blob_bytes=int(ns.max_blob_mib * MiB)),
        peers=peer_limits(ns),
        metrics_listen=ns.metrics_listen,
        serve_data_listen=ns.serve_data_listen,
        serve_data_max_frame_bytes=int(ns.serve_data_max_frame_mib * MiB),
        dashboard_listen=ns.dashboard_listen,
        health_interval_ms=ns.health_interval_ms,
        drain_s=ns.drain_s,
        bulk=bulk_settings(ns),
    )
