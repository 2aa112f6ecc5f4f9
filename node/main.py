"""`tensorgrid-node`: create a node key, run the node daemon."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from node.config import CHAIN, CONFIG, COORDINATOR, GLOBAL, PASSWORD_ENV, RUN, SETTINGS, TLS, AgentConfig
from tensorgrid import config, config_show, exitcodes, owner
from tensorgrid.crypto import Signer, load_keystore, save_keystore
from tensorgrid.errors import KeystoreError, TensorGridError
from tensorgrid.logs import dump_stacks_on_signal, setup_logging
from tensorgrid.sandbox.confine import forbid_inspection
from tensorgrid.serving import trace
from tensorgrid.tls import ClientTls
from tensorgrid.types import Domain

if TYPE_CHECKING:
    from node.metrics import NodeMetrics

log = logging.getLogger("tensorgrid.node")
PROGRAM = "tensorgrid-node"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROGRAM,
        description="The TensorGrid node daemon: lends this machine's GPU (or CPU) to the grid and is paid "
        "for verified work. Workloads are torch.export programs and safetensors: no foreign code runs here. "
        "Every setting is a flag, an environment variable and a key of the --config TOML file: a flag beats "
        "its variable, which beats the file (init's own flags are flags only).",
    )
    config.add_version(p)
    config.add_settings(p, CONFIG, *GLOBAL)
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a new node key in an encrypted keystore")
    init.add_argument("--force", action="store_true", help="replace an existing keystore (the old key is lost)")
    init.add_argument("--light-kdf", action="store_true", help="cheap key derivation, for tests and local devnets only")
    init.add_argument(
        "--import-key-env",
        metavar="VAR",
        help="import the hex private key held in env var VAR instead of making one (devnets)",
    )
    sub.add_parser("address", help="print the node's address")
    run = sub.add_parser("run", help="take and run work until SIGTERM (first: drain; second: stop now)")
    config.add_settings(run, *RUN)
    config_show.add_show_parser(sub, RUN, PROGRAM)
    earn = sub.add_parser("earnings", help="show what this node has earned and can claim")
    claim = sub.add_parser("claim", help="claim posted earnings on chain")
    for parser in (earn, claim):
        config.add_settings(parser, *CHAIN, COORDINATOR, *TLS)
    return p


def parse_args(argv: list[str] | None, env: config.Env | None = None) -> argparse.Namespace:
    return config.parse_args(build_parser(), argv, SETTINGS, env, CONFIG)


def cmd_config(ns: argparse.Namespace) -> int:
    """`config show`: the settings `run` would use here, and where the keystore's password would come from."""
    if ns.password_file is not None:
        password = f"keystore password: read from {ns.password_file}"
    elif os.environ.get(PASSWORD_ENV):
        password = f"keystore password: ${PASSWORD_ENV} (set; not shown)"
    else:
        password = f"keystore password: asked at the terminal (no --password-file, no ${PASSWORD_ENV})"
    unknown = [f"${name} is set but is no setting (misspelt?): ignored" for name in unknown_variables()]
    print(config_show.show(ns, SETTINGS, PROGRAM, CONFIG, notes=[password, *unknown]))
    return exitcodes.OK


def take_password_env() -> str:
    """Read the password from the environment and drop it there at once: no child process
    (a task's worker, a chain helper) inherits it, whatever environment it is given."""
    return os.environ.pop(PASSWORD_ENV)


def read_password(ns: argparse.Namespace, confirm: bool = False) -> str:
    if ns.password_file:
        try:
            return ns.password_file.read_text().rstrip("\n")
        except OSError as e:
            raise KeystoreError(f"cannot read --password-file: {e}") from None
    if PASSWORD_ENV in os.environ:  # read when needed: a password never sits in a default
        return take_password_env()
    if not sys.stdin.isatty():
        raise KeystoreError(f"no password: set ${PASSWORD_ENV}, pass --password-file, or run in a terminal")
    pw = getpass.getpass("keystore password: ")
    if confirm and getpass.getpass("again: ") != pw:
        raise KeystoreError("the passwords differ")
    return pw


def cmd_init(ns: argparse.Namespace) -> int:
    if ns.keystore.exists() and not ns.force:
        raise KeystoreError(f"{ns.keystore} exists; use --force to replace it (its key is then lost)")
    signer = Signer.from_hex(os.environ[ns.import_key_env]) if ns.import_key_env else Signer.generate()
    save_keystore(signer, ns.keystore, read_password(ns, confirm=True), light=ns.light_kdf, overwrite=ns.force)
    print(f"node address {signer.address}\nkeystore     {ns.keystore}")
    return exitcodes.OK


def ensure_staked(ns: argparse.Namespace, signer: Signer) -> None:
    """Register on NodeRegistry with a stake if this key has none (chain mode only)."""
    from node.settle import ensure_staked as stake

    if ns.chain_rpc:
        stake(_chain(ns, signer), ns.stake_wei)


def _chain(ns: argparse.Namespace, signer: Signer) -> object:
    from tensorgrid.chain.client import ChainClient
    from tensorgrid.chain.deploy import load_deployment

    if not ns.chain_rpc or ns.deployment is None:
        raise TensorGridError("this needs --chain-rpc and --deployment")
    return ChainClient.connect(ns.chain_rpc, load_deployment(ns.deployment), signer.private_key)


def client_tls(ns: argparse.Namespace) -> ClientTls:
    return ClientTls(ns.ca_cert, ns.insecure)


def deployment_domain(ns: argparse.Namespace) -> Domain | None:
    """The EIP-712 domain of --deployment, the only one this node signs under; None without one."""
    if ns.deployment is None:
        return None
    from tensorgrid.chain.deploy import load_deployment

    return load_deployment(ns.deployment).domain


async def run_agent(ns: argparse.Namespace, signer: Signer) -> None:
    from node.agent import Agent
    from node.cache import BlobCache
    from node.hardware import detect
    from tensorgrid.sandbox import launch

    launch.configure(ns.sandbox_zygote)  # how task workers and serving replicas start

    memory = int(ns.memory_gib * (1 << 30)) if ns.memory_gib else None
    caps = detect(ns.device, memory)
    config = AgentConfig(
        coordinator=ns.coordinator,
        work_dir=ns.data_dir / "work",
        slots=ns.slots,
        device=caps.device_kind,
        threads=ns.threads,
        serve_replicas=max(0, ns.serve_replicas),
        worker_start=ns.worker_start,
        tls=client_tls(ns),
        domain=deployment_domain(ns),
    )
    cache = BlobCache(ns.data_dir / "cache", int(ns.cache_gib * (1 << 30)))
    metrics = start_metrics(ns, signer.address, caps.device_kind) if ns.metrics_listen else None
    agent = Agent(config, signer, caps, cache, metrics)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            agent.drain()
        else:
            log.warning("second signal: stopping now")
            loop.create_task(_abort(agent))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    gc.freeze()  # start-up's objects live as long as the daemon: keep full collections short
    trace.start("agent")
    try:
        await agent.run()
    finally:
        if metrics is not None:
            metrics.stop()


def start_metrics(ns: argparse.Namespace, address: str, device_kind: str) -> NodeMetrics:
    """Serve --metrics-listen, reading the machine at each scrape and polling this node's earnings."""
    from node.metrics import NodeMetrics
    from node.settle import earnings_of

    metrics = NodeMetrics()
    metrics.watch_machine(device_kind)
    tls = client_tls(ns)
    metrics.earnings.start(lambda: earnings_of(ns.coordinator, address, tls))
    metrics.serve(ns.metrics_listen)
    return metrics


async def _abort(agent: object) -> None:
    await agent.abort()  # type: ignore[attr-defined]
    os._exit(exitcodes.INTERRUPTED)


def unknown_variables() -> list[str]:
    return config.unknown_variables("TENSORGRID_NODE_", (*SETTINGS, CONFIG))


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    setup_logging(ns.verbose, "tensorgrid.node", ns.log_format)
    dump_stacks_on_signal()  # kill -USR1: every thread's stack into the log (README, Logs)
    for name in unknown_variables():
        log.warning("$%s is set but is no setting of %s (misspelt?): ignored", name, PROGRAM)
    forbid_inspection()  # a job's worker must not read this process's key or environment
    try:
        if ns.command == "config":
            return cmd_config(ns)
        if ns.command == "init":
            return cmd_init(ns)
        if ns.command == "run":
            owner.watch(ns.owner)  # before the key and the stake: an owner gone meanwhile still ends us
        signer = load_keystore(ns.keystore, read_password(ns))
        if ns.command == "address":
            print(signer.address)
            return exitcodes.OK
        if ns.command in ("earnings", "claim"):
            from node.settle import claim, show_earnings

            if ns.command == "earnings":
                chain = _chain(ns, signer) if ns.chain_rpc else None
                return show_earnings(ns.coordinator, signer.address, chain, client_tls(ns))
            return claim(ns.coordinator, _chain(ns, signer), client_tls(ns))
        ensure_staked(ns, signer)
        asyncio.run(run_agent(ns, signer))
        return exitcodes.OK
    except TensorGridError as e:
        log.error("%s", e)
        return exitcodes.ERROR


if __name__ == "__main__":
    sys.exit(main())
