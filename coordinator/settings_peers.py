"""The coordinator's settings on its peers: how much each may ask at once (PeerLimits) and how
long a signed-in session lasts. Part of coordinator.settings' SETTINGS."""

from __future__ import annotations

import argparse

from coordinator.config import CoordinatorConfig, PeerLimits
from tensorgrid import config
from tensorgrid.config import Setting
from tensorgrid.errors import TensorGridError

MiB = 1 << 20
ENV_PREFIX = "TENSORGRID_COORDINATOR_"
HOUR_MS = 3600 * 1000
# A session token is a bearer secret: one that lives for weeks is one a leaked log keeps useful
# for weeks. Past these bounds the coordinator refuses to start rather than guess.
SESSION_TTL_BOUNDS_MS = (60 * 1000, 7 * 24 * HOUR_MS)
NODE_CALLS = Setting(
    "--max-node-calls",
    ENV_PREFIX + "MAX_NODE_CALLS",
    PeerLimits.calls_per_node,
    type=int,
    help="concurrent RPCs one node may have in flight (more: RESOURCE_EXHAUSTED)",
)
NODE_STREAMS = Setting(
    "--max-node-streams",
    ENV_PREFIX + "MAX_NODE_STREAMS",
    PeerLimits.streams_per_node,
    type=int,
    help="concurrent streaming RPCs one node may have open",
)
IP_CALLS = Setting(
    "--max-ip-calls",
    ENV_PREFIX + "MAX_IP_CALLS",
    PeerLimits.calls_per_ip,
    type=int,
    help="concurrent RPCs from one IP address without a node session",
)
IP_STREAMS = Setting(
    "--max-ip-streams",
    ENV_PREFIX + "MAX_IP_STREAMS",
    PeerLimits.streams_per_ip,
    type=int,
    help="concurrent streaming RPCs from one IP address without a node session",
)
TOTAL_CALLS = Setting(
    "--max-calls",
    ENV_PREFIX + "MAX_CALLS",
    PeerLimits.calls_total,
    type=int,
    help="concurrent RPCs of all peers together; each connected node holds about one (its long poll)",
)
RESULT_MEMORY_MIB = Setting(
    "--result-memory-mib",
    ENV_PREFIX + "RESULT_MEMORY_MIB",
    PeerLimits.result_memory_bytes / MiB,
    type=float,
    help="small results held in memory at once, over all nodes (beyond it they go to disk)",
)
PEER_SETTINGS = (NODE_CALLS, NODE_STREAMS, IP_CALLS, IP_STREAMS, TOTAL_CALLS, RESULT_MEMORY_MIB)
SESSION_TTL = Setting(
    "--session-ttl",
    ENV_PREFIX + "SESSION_TTL",
    f"{CoordinatorConfig.session_ttl_ms // HOUR_MS}h",
    help="how long a session an SDK, CLI or node opens by signing with its key lasts before it must sign "
    "again (1m to 7d; e.g. 24h, 90m)",
    metavar="DURATION",
)
DASHBOARD_SESSION_TTL = Setting(
    "--dashboard-session-ttl",
    ENV_PREFIX + "DASHBOARD_SESSION_TTL",
    "8h",
    help="how long a `tensorgrid dashboard` link works: its read-only session (worth nothing over gRPC) "
    "ends this long after it opens (1m to 7d; e.g. 8h, 30m)",
    metavar="DURATION",
)
SESSION_SETTINGS = (SESSION_TTL, DASHBOARD_SESSION_TTL)


def peer_limits(ns: argparse.Namespace) -> PeerLimits:
    return PeerLimits(
        calls_per_node=ns.max_node_calls,
        streams_per_node=ns.max_node_streams,
        calls_per_ip=ns.max_ip_calls,
        streams_per_ip=ns.max_ip_streams,
        calls_total=ns.max_calls,
        result_memory_bytes=int(ns.result_memory_mib * MiB),
    )


def session_ttls(ns: argparse.Namespace) -> tuple[int, int]:
    """(session_ttl_ms, dashboard_session_ttl_ms) from --session-ttl and --dashboard-session-ttl;
    TensorGridError when one lies outside SESSION_TTL_BOUNDS_MS."""
    low, high = SESSION_TTL_BOUNDS_MS
    full, dashboard = config.duration_ms(ns.session_ttl), config.duration_ms(ns.dashboard_session_ttl)
    for setting, value, ms in (
        (SESSION_TTL, ns.session_ttl, full),
        (DASHBOARD_SESSION_TTL, ns.dashboard_session_ttl, dashboard),
    ):
        if not low <= ms <= high:
            raise TensorGridError(f"{setting.flag} must lie between 1m and 7d, got {value!r}")
    return full, dashboard
