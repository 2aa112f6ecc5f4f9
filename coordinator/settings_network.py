"""The coordinator's settings on where and how it serves: its gRPC address and TLS, its health and
drain on SIGTERM, and its other ports (bulk, metrics, serving data, dashboard). Part of
coordinator.settings' SETTINGS."""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.config import BulkSettings, CoordinatorConfig
from tensorgrid import config
from tensorgrid.config import Setting

MiB = 1 << 20
ENV_PREFIX = "TENSORGRID_COORDINATOR_"
LISTEN = Setting(
    "--listen",
    ENV_PREFIX + "LISTEN",
    CoordinatorConfig.listen,
    help="host:port to serve gRPC on (port 0: any free port); without --tls-cert only a loopback "
    "address, unless --insecure",
    metavar="HOST:PORT",
)
TLS_CERT = Setting(
    "--tls-cert",
    ENV_PREFIX + "TLS_CERT",
    CoordinatorConfig.tls_cert,
    type=Path,
    help="PEM certificate (chain) to serve gRPC over TLS with, from your own CA or a public one",
    metavar="FILE",
)
TLS_KEY = Setting(
    "--tls-key",
    ENV_PREFIX + "TLS_KEY",
    CoordinatorConfig.tls_key,
    type=Path,
    help="the certificate's unencrypted PEM private key",
    metavar="FILE",
)
INSECURE = Setting(
    "--insecure",
    ENV_PREFIX + "INSECURE",
    CoordinatorConfig.insecure,
    type=config.switch,
    help="serve plain text on a non-loopback address (without TLS a coordinator listens only on loopback)",
)
HEALTH_INTERVAL_MS = Setting(
    "--health-interval-ms",
    ENV_PREFIX + "HEALTH_INTERVAL_MS",
    CoordinatorConfig.health_interval_ms,
    type=int,
    help="how often gRPC health checks the database (NOT_SERVING while it does not answer)",
)
DRAIN_S = Setting(
    "--drain-s",
    ENV_PREFIX + "DRAIN_S",
    CoordinatorConfig.drain_s,
    type=float,
    help="on SIGTERM, health says NOT_SERVING this long before the coordinator stops taking calls",
)
BULK_LISTEN = Setting(
    "--bulk-listen",
    ENV_PREFIX + "BULK_LISTEN",
    BulkSettings.listen,
    help="host:port of the bulk port, where large blobs move outside gRPC after a ticket from it "
    "(TLS with --tls-cert); empty: --listen's host, any free port; off: none (blobs go over gRPC)",
    metavar="HOST:PORT|off",
)
BULK_HELLO_S = Setting(
    "--bulk-hello-s",
    ENV_PREFIX + "BULK_HELLO_S",
    BulkSettings.hello_timeout_s,
    type=float,
    help="a bulk connection must show its ticket within this long",
)
BULK_IDLE_S = Setting(
    "--bulk-idle-s",
    ENV_PREFIX + "BULK_IDLE_S",
    BulkSettings.idle_timeout_s,
    type=float,
    help="a bulk transfer whose bytes stop for this long is dropped",
)
METRICS_LISTEN = Setting(
    "--metrics-listen",
    ENV_PREFIX + "METRICS_LISTEN",
    CoordinatorConfig.metrics_listen,
    help="host:port to serve Prometheus metrics on (/metrics: counts only, no job or address; plain "
    "HTTP, no authentication: keep it on loopback or a private network); empty: none",
    metavar="HOST:PORT",
)
SERVE_DATA_LISTEN = Setting(
    "--serve-data-listen",
    ENV_PREFIX + "SERVE_DATA_LISTEN",
    CoordinatorConfig.serve_data_listen,
    help="host:port of the serving data port (port 0: any free port): a node may open one plain TCP "
    "connection per inference replica there, proven with a per-replica token, and its warm worker "
    "answers requests on it directly (docs/SERVING.md); plain text, so it stays off when gRPC is "
    "served with --tls-cert (replicas use their Serve streams); empty: none",
    metavar="HOST:PORT",
)
SERVE_DATA_MAX_FRAME_MIB = Setting(
    "--serve-data-max-frame-mib",
    ENV_PREFIX + "SERVE_DATA_MAX_FRAME_MIB",
    CoordinatorConfig.serve_data_max_frame_bytes / MiB,
    type=float,
    help="largest frame a worker may send up its data link (a micro-batch's replies); a larger one "
    "closes the link and its requests fail over",
)
DASHBOARD_LISTEN = Setting(
    "--dashboard-listen",
    ENV_PREFIX + "DASHBOARD_LISTEN",
    CoordinatorConfig.dashboard_listen,
    help="host:port to serve the read-only web dashboard on (each submitter sees its own jobs, with a "
    "link from `tensorgrid dashboard`; HTTPS with --tls-cert, else loopback only unless --insecure); empty: none",
    metavar="HOST:PORT",
)


def bulk_settings(ns: argparse.Namespace) -> BulkSettings:
    """The bulk port's settings from the parsed flags."""
    return BulkSettings(listen=ns.bulk_listen, hello_timeout_s=ns.bulk_hello_s, idle_timeout_s=ns.bulk_idle_s)
