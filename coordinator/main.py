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
from tensorgrid import exitcodes
from tensorgrid.errors import TensorGridError
from tensorgrid.logs import setup_logging

log = logging.getLogger("tensorgrid.coordinator")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tensorgrid-coordinator",
        description="Run the TensorGrid coordinator: it shards jobs, leases tasks to nodes over gRPC, "
        "checks their signed results and assembles the output.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve until SIGTERM/Ctrl-C")
    run.add_argument("--listen", default="127.0.0.1:7070", help="host:port to serve gRPC on (port 0: any free port)")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var/coordinator"),
        help="blob store, SQLite file and the coordinator key live here (default: %(default)s)",
    )
    run.add_argument(
        "--database-url",
        default="",
        help="SQLAlchemy URL; default SQLite in --data-dir. PostgreSQL: "
        "postgresql://user@host:5432/dbname (also env TENSORGRID_DATABASE_URL)",
    )
    run.add_argument("--chain-id", type=int, default=31337, help="EIP-712 chain id receipts are signed for")
    run.add_argument("--heartbeat-ms", type=int, default=5000, help="how often nodes should heartbeat")
    run.add_argument(
        "--lease-ttl-ms",
        type=int,
        default=15000,
        help="a lease without a heartbeat for this long is reissued to another node",
    )
    run.add_argument("--max-shard-mib", type=float, default=512, help="largest input shard a job may ask for")
    run.add_argument("--max-blob-mib", type=float, default=64 * 1024, help="largest blob a submitter may upload")
    run.add_argument("--chain-rpc", default="", help="JSON-RPC URL of the chain holding escrows and stakes")
    run.add_argument("--deployment", type=Path, help="deployments file of the contracts (with --chain-rpc)")
    run.add_argument("--epoch-seconds", type=float, default=30.0, help="how often earnings are posted on chain")
    run.add_argument(
        "--check-wait-ms",
        type=int,
        default=30_000,
        help="a spot-check no other node takes within this long passes as 'unverified' (grids of one node)",
    )
    run.add_argument("--ready-file", type=Path, help="write the bound port here once serving (for scripts)")
    run.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def config_from(ns: argparse.Namespace) -> CoordinatorConfig:
    import os

    if ns.lease_ttl_ms < 2 * ns.heartbeat_ms:
        raise TensorGridError("--lease-ttl-ms must be at least twice --heartbeat-ms, or live nodes lose leases")
    return CoordinatorConfig(
        listen=ns.listen,
        data_dir=ns.data_dir,
        database_url=ns.database_url or os.environ.get("TENSORGRID_DATABASE_URL", ""),
        chain_id=ns.chain_id,
        chain_rpc=ns.chain_rpc,
        deployment=ns.deployment,
        epoch_interval_ms=int(ns.epoch_seconds * 1000),
        heartbeat_interval_ms=ns.heartbeat_ms,
        check_wait_ms=ns.check_wait_ms,
        timing=LeaseTiming(ttl_ms=ns.lease_ttl_ms),
        limits=Limits(
            max_shard_bytes=int(ns.max_shard_mib * (1 << 20)), max_blob_bytes=int(ns.max_blob_mib * (1 << 20))
        ),
    )


async def serve(config: CoordinatorConfig, ready_file: Path | None = None) -> None:
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
