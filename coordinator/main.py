"""`tensorgrid-coordinator`: the coordinator daemon's entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from coordinator.api.server import build_server
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig, LeaseTiming, Limits
from tensorgrid import config, exitcodes
from tensorgrid.config import Setting
from tensorgrid.errors import TensorGridError
from tensorgrid.logs import setup_logging
from tensorgrid.sandbox.confine import forbid_inspection

log = logging.getLogger("tensorgrid.coordinator")


MiB = 1 << 20
_COORDINATOR = "TENSORGRID_COORDINATOR_"
# Each default is CoordinatorConfig's own (or its Limits' and LeaseTiming's), shown in the units of the flag.
LISTEN = Setting(
    "--listen",
    _COORDINATOR + "LISTEN",
    CoordinatorConfig.listen,
    help="host:port to serve gRPC on (port 0: any free port)",
    metavar="HOST:PORT",
)
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
    help="SQLAlchemy URL; none: SQLite in --data-dir. PostgreSQL: postgresql://user@host:5432/dbname",
    metavar="URL",
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
    help="how often nodes should heartbeat",
)
LEASE_TTL_MS = Setting(
    "--lease-ttl-ms",
    _COORDINATOR + "LEASE_TTL_MS",
    LeaseTiming.ttl_ms,
    type=int,
    help="a lease without a heartbeat for this long is reissued to another node",
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
SETTINGS = (
    LISTEN,
    DATA_DIR,
    DATABASE_URL,
    CHAIN_ID,
    HEARTBEAT_MS,
    LEASE_TTL_MS,
    MAX_SHARD_MIB,
    MAX_BLOB_MIB,
    config.CHAIN_RPC,
    config.DEPLOYMENT,
    EPOCH_SECONDS,
    CHECK_WAIT_MS,
    REFEREE_TIME_S,
    REFEREE_MEMORY_MIB,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tensorgrid-coordinator",
        description="Run the TensorGrid coordinator: it shards jobs, leases tasks to nodes over gRPC, "
        "checks their signed results and assembles the output.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = config.add_settings(sub.add_parser("run", help="serve until SIGTERM/Ctrl-C"), *SETTINGS)
    run.add_argument("--ready-file", type=Path, help="write the bound port here once serving (for scripts)")
    run.add_argument("-v", "--verbose", action="store_true")
    return p


def parse_args(argv: list[str] | None, env: config.Env | None = None) -> argparse.Namespace:
    return config.parse_args(build_parser(), argv, SETTINGS, env)


def config_from(ns: argparse.Namespace) -> CoordinatorConfig:
    if ns.lease_ttl_ms < 2 * ns.heartbeat_ms:
        raise TensorGridError("--lease-ttl-ms must be at least twice --heartbeat-ms, or live nodes lose leases")
    return CoordinatorConfig(
        listen=ns.listen,
        data_dir=ns.data_dir,
        database_url=ns.database_url,
        chain_id=ns.chain_id,
        chain_rpc=ns.chain_rpc,
        deployment=ns.deployment,
        epoch_interval_ms=int(ns.epoch_seconds * 1000),
        heartbeat_interval_ms=ns.heartbeat_ms,
        check_wait_ms=ns.check_wait_ms,
        referee_time_s=ns.referee_time_s,
        referee_memory_bytes=int(ns.referee_memory_mib * MiB),
        timing=LeaseTiming(ttl_ms=ns.lease_ttl_ms),
        limits=Limits(max_shard_bytes=int(ns.max_shard_mib * MiB), max_blob_bytes=int(ns.max_blob_mib * MiB)),
    )


async def serve(config: CoordinatorConfig, ready_file: Path | None = None) -> None:
    forbid_inspection()  # a sandboxed referee must not read this process's key or secrets
    app = Coordinator(config)
    server, port = await build_server(app, config.listen)
    await server.start()
    await app.start()
    host = config.listen.rsplit(":", 1)[0]
    log.info(
        "coordinator %s serving on %s:%d (db %s)",
        app.identity.address,
        host,
        port,
        app.store.engine.url.render_as_string(),
    )
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=3)
    await app.stop()


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    setup_logging(ns.verbose, "tensorgrid.coordinator")
    try:
        asyncio.run(serve(config_from(ns), ns.ready_file))
    except TensorGridError as e:
        log.error("%s", e)
        return exitcodes.ERROR
    except OSError as e:
        log.error("cannot start: %s", e)
        return exitcodes.ERROR
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
