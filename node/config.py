"""The node's settings: the agent's configuration and the command line's options, each default once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from tensorgrid import config
from tensorgrid.config import Setting, under_home
from tensorgrid.tls import ClientTls
from tensorgrid.types import Domain


@dataclass(frozen=True)
class AgentConfig:
    coordinator: str
    work_dir: Path
    slots: int = 1
    device: str = "auto"
    threads: int = 0  # 0: torch's default
    serve_replicas: int = 1  # endpoint replicas held at once (node.serving); 0: serve none
    rpc_timeout_s: float = 30.0
    tls: ClientTls = ClientTls()
    domain: Domain | None = None  # the deployments file's EIP-712 domain: sign under no other
    # "boot": task workers start (torch's import) before the node registers, warm for its first
    # lease; "first-task": with the first task, and without torch for noop tasks (test grids)
    worker_start: str = "boot"


KEYSTORE = Setting(
    "--keystore",
    "TENSORGRID_NODE_KEYSTORE",
    under_home("node-key.json"),
    type=Path,
    help="encrypted key file; its address is the node's identity and payee",
    metavar="FILE",
)
COORDINATOR = replace(
    config.COORDINATOR,
    default=None,
    required=True,
    help="HOST:PORT of the coordinator's gRPC endpoint, or of its replicas in order (a:7070,b:7070)",
)
DATA_DIR = Setting(
    "--data-dir",
    "TENSORGRID_NODE_DATA_DIR",
    under_home("node"),
    type=Path,
    help="blob cache and scratch files",
    metavar="DIR",
)
DEVICE = Setting(
    "--device",
    "TENSORGRID_NODE_DEVICE",
    "auto",
    choices=("auto", "cpu", "cuda"),
    help="auto: CUDA when present, else CPU",
)
SLOTS = Setting("--slots", "TENSORGRID_NODE_SLOTS", AgentConfig.slots, type=int, help="tasks to run at once")
THREADS = Setting(
    "--threads",
    "TENSORGRID_NODE_THREADS",
    AgentConfig.threads,
    type=int,
    help="torch threads per task; 0: torch's default",
)
SERVE_REPLICAS = Setting(
    "--serve-replicas",
    "TENSORGRID_NODE_SERVE_REPLICAS",
    AgentConfig.serve_replicas,
    type=int,
    help="endpoint replicas to hold at once for real-time serving (each a warm worker); 0: serve no endpoints",
)
WORKER_START = Setting(
    "--worker-start",
    "TENSORGRID_NODE_WORKER_START",
    AgentConfig.worker_start,
    choices=("boot", "first-task"),
    help="when task workers start: before registering (warm for the first lease) or with the first task "
    "(a node that runs only noop tasks never imports torch)",
)
MEMORY_GIB = Setting(
    "--memory-gib", "TENSORGRID_NODE_MEMORY_GIB", None, type=float, help="memory to offer; none: what is free"
)
CACHE_GIB = Setting("--cache-gib", "TENSORGRID_NODE_CACHE_GIB", 10.0, type=float, help="blob cache size")
STAKE_WEI = Setting(
    "--stake-wei",
    "TENSORGRID_NODE_STAKE_WEI",
    0,
    type=int,
    help="stake to register with on chain if not yet staked; 0: the minimum",
)
PASSWORD_ENV = "TENSORGRID_KEY_PASSWORD"
PASSWORD_FILE = Setting(
    "--password-file",
    "TENSORGRID_NODE_PASSWORD_FILE",
    None,
    type=Path,
    help=f"read the keystore password from this file; none: ${PASSWORD_ENV}, else a prompt",
    metavar="FILE",
)
VERBOSE = Setting(
    "--verbose", "TENSORGRID_NODE_VERBOSE", False, type=config.switch, help="log at DEBUG level", aliases=("-v",)
)
LOG_FORMAT = replace(config.LOG_FORMAT, env="TENSORGRID_NODE_LOG_FORMAT")
METRICS_LISTEN = Setting(
    "--metrics-listen",
    "TENSORGRID_NODE_METRICS_LISTEN",
    "",
    help="host:port to serve this node's Prometheus metrics on (/metrics: tasks, bytes, CPU, memory, GPU, "
    "earnings; no job or address; plain HTTP, no authentication: keep it on loopback or a private "
    "network); empty: none",
    metavar="HOST:PORT",
)
CONFIG = config.config_setting("TENSORGRID_NODE_CONFIG", "tensorgrid-node")
CHAIN = (config.CHAIN_RPC, config.DEPLOYMENT)
TLS = config.CLIENT_TLS
GLOBAL = (KEYSTORE, PASSWORD_FILE, VERBOSE, LOG_FORMAT)  # before the command: every command has them
RUN = (
    COORDINATOR,
    DATA_DIR,
    DEVICE,
    SLOTS,
    THREADS,
    SERVE_REPLICAS,
    WORKER_START,
    config.SANDBOX_ZYGOTE,
    config.OWNER,
    MEMORY_GIB,
    CACHE_GIB,
    *CHAIN,
    STAKE_WEI,
    *TLS,
    METRICS_LISTEN,
)
SETTINGS = (*GLOBAL, *RUN)  # every setting a command of the daemon reads
