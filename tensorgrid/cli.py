"""`tensorgrid`: the submitter's command line (jobs) and the demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from tensorgrid import config, exitcodes, extras
from tensorgrid.cli_dashboard import DASHBOARD_URL, add_dashboard_parser, cmd_dashboard
from tensorgrid.cli_endpoint import add_endpoint_parser, cmd_endpoint
from tensorgrid.cli_generate import add_generate_parser, cmd_submit_generate
from tensorgrid.cli_ids import job_id_of, not_yours
from tensorgrid.cli_training import add_training_parser, cmd_submit_training
from tensorgrid.completion import SHELLS, script
from tensorgrid.config import Setting, given, under_home
from tensorgrid.errors import TensorGridError
from tensorgrid.logs import setup_logging
from tensorgrid.report import ended_tasks, format_eth, notable_events, print_events, print_job
from tensorgrid.spec import (
    DEVICES,
    VERIFY_MODES,
    GiB,
    InferenceSpec,
    VerificationSpec,
)

KEY = Setting(
    "--key",
    "TENSORGRID_KEY",
    under_home("submitter.key"),
    type=Path,
    help="submitter key file, created on first use",
    metavar="FILE",
)
BULK = Setting(
    "--bulk",
    "TENSORGRID_BULK",
    "auto",
    choices=("auto", "off", "only"),
    help="how blobs of 1 MiB or more move: auto, the coordinator's bulk port if it has one, else gRPC; "
    "off: always gRPC (e.g. when a firewall blocks the bulk port); only: the bulk port or an error",
)
SETTINGS = (config.COORDINATOR, KEY, config.CHAIN_RPC, config.DEPLOYMENT, *config.CLIENT_TLS, BULK, config.LOG_FORMAT)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tensorgrid",
        description="Submit PyTorch jobs to a TensorGrid coordinator and fetch their results.",
    )
    config.add_version(p)
    sub = p.add_subparsers(dest="group", required=True)
    demo = sub.add_parser("demo", help="run a coordinator and two nodes locally and do grid inference")
    demo.add_argument("--nodes", type=int, default=2)
    demo.add_argument("--rows", type=int, default=20_000, help="rows of digits data to classify")
    demo.add_argument("--shard-rows", type=int, default=2_000)
    demo.add_argument("--keep", type=Path, help="keep the demo's files in this directory")
    demo.add_argument("--no-chain", action="store_true", help="skip the devnet chain: no escrow, no settlement")
    devnet = sub.add_parser("devnet", help="a local chain, contracts, coordinator and staked nodes").add_subparsers(
        dest="command", required=True
    )
    dup = devnet.add_parser("up", help="start anvil, deploy the contracts, start a coordinator and nodes")
    dup.add_argument("--nodes", type=int, default=2)
    dup.add_argument("--epoch-seconds", type=float, default=5.0, help="how often earnings are posted on chain")
    for name, text in (("status", "show what the devnet runs"), ("down", "stop everything `up` started")):
        devnet.add_parser(name, help=text)
    for action_parser in devnet.choices.values():
        action_parser.add_argument("--dir", type=Path, default=Path("var/devnet"), help="devnet state and logs")
    job = sub.add_parser("job", help="submit, watch, fetch, list and cancel jobs").add_subparsers(
        dest="command", required=True
    )
    common = config.add_settings(argparse.ArgumentParser(add_help=False), *SETTINGS)
    add_submit_parser(job, common)
    w = job.add_parser("watch", parents=[common], help="follow a job's progress live")
    w.add_argument("job_id")
    st = job.add_parser("status", parents=[common], help="a job's state, result and verification report")
    st.add_argument("job_id", help="the job's id, or its first 8 or more characters (as `job list` shows them)")
    st.add_argument("--json", action="store_true", help="print the job as one JSON object")
    st.add_argument(
        "--events",
        type=int,
        default=10,
        metavar="N",
        help="list the job's last N notable events (failures, reissues, claims, caught results; 0: none)",
    )
    r = job.add_parser("result", parents=[common], help="download a finished job's result")
    r.add_argument("job_id")
    r.add_argument("-o", "--output", type=Path, required=True)
    ls = job.add_parser("list", parents=[common], help="list your recent jobs (those submitted with --key)")
    ls.add_argument("--mine", action="store_true", help="kept for old scripts: every submitter sees only its own jobs")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true", help="print one JSON object per line, whole ids included")
    c = job.add_parser("cancel", parents=[common], help="cancel a job you submitted")
    c.add_argument("job_id")
    add_training_parser(job, common)
    add_generate_parser(job, common)
    add_endpoint_parser(sub, common)
    add_dashboard_parser(sub, common)
    nodes = sub.add_parser("nodes", parents=[common], help="list the grid's nodes and their record")
    nodes.add_argument("--json", action="store_true", help="print one JSON object per node and line")
    nodes.set_defaults(command="nodes")
    comp = sub.add_parser("completion", help="print a shell completion script: source <(tensorgrid completion bash)")
    comp.add_argument("shell", choices=SHELLS)
    comp.set_defaults(command="completion")
    return p


def load_or_create_key(path: Path) -> Any:
    from tensorgrid.crypto import load_or_create_key_file

    signer, created = load_or_create_key_file(path)
    if created:
        print(f"created submitter key {path} (address {signer.address})", file=sys.stderr)
    return signer


def _client(ns: argparse.Namespace) -> Any:
    from tensorgrid.client import Client

    signer = load_or_create_key(ns.key)
    chain = None
    if ns.chain_rpc:
        from tensorgrid.chain.client import ChainClient
        from tensorgrid.chain.deploy import load_deployment

        if ns.deployment is None:
            raise TensorGridError("--chain-rpc needs --deployment")
        chain = ChainClient.connect(ns.chain_rpc, load_deployment(ns.deployment), signer.private_key)
    return Client(ns.coordinator, signer, chain=chain, ca_cert=ns.ca_cert, insecure=ns.insecure, bulk=ns.bulk)


def job_json(job: Any, **extra: Any) -> str:
    """A JobInfo (or NodeStatus) as one line of JSON (enums by value, bytes as hex), with extra keys."""
    import dataclasses
    import enum
    import json

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, bytes):
            return value.hex()
        raise TypeError(f"{type(value).__name__} is not JSON")

    return json.dumps({**dataclasses.asdict(job), **extra}, default=plain, sort_keys=True)


def cmd_submit(ns: argparse.Namespace) -> int:
    from tensorgrid.progress import byte_progress

    with _client(ns) as client, byte_progress("uploading") as progress:
        job = client.submit_inference(ns.model, ns.inputs, progress=progress, **inference_settings(ns))
    print(f"submitted job {job.job_id} ({job.tasks_total} tasks)")
    if not ns.watch:
        return exitcodes.OK
    ns.job_id = job.job_id
    code = cmd_watch(ns)
    if code == exitcodes.OK and ns.output:
        return cmd_result(ns)
    return code


def cmd_watch(ns: argparse.Namespace) -> int:
    from tensorgrid.progress import watch_job

    ended: set[int] = set()  # its tasks that ended without a result, as their events say
    with _client(ns) as client:
        try:
            job = watch_job(client, job_id_of(client, ns.job_id), ended=ended)
        except TensorGridError as e:
            raise not_yours(ns, client, ns.job_id, e) from None
    print_job(job, len(ended))
    return exitcodes.OK if job.state.value == "succeeded" else exitcodes.JOB_FAILED


def cmd_status(ns: argparse.Namespace) -> int:
    import dataclasses

    if ns.events < 0:
        raise TensorGridError("--events must be 0 or more")
    with _client(ns) as client:
        try:
            job = client.job(job_id_of(client, ns.job_id))
            # an ended task counts as a failure too: none, no events to read for them
            events = list(client.events_now(job.job_id)) if ns.events or job.task_failures else []
        except TensorGridError as e:
            raise not_yours(ns, client, ns.job_id, e) from None
    shown, left_out = notable_events(events, ns.events) if ns.events else ([], 0)
    ended = ended_tasks(events)
    if ns.json:
        shown_json = [dataclasses.asdict(ev) for ev in shown]
        print(job_json(job, events=shown_json, events_left_out=left_out, tasks_ended=ended))
    else:
        print_job(job, ended)
        print_events(job.job_id, shown, left_out)
    return exitcodes.OK


def cmd_result(ns: argparse.Namespace) -> int:
    from tensorgrid.progress import byte_progress

    with _client(ns) as client, byte_progress("downloading") as progress:
        try:
            path = client.result(job_id_of(client, ns.job_id), ns.output, progress)
        except TensorGridError as e:
            raise not_yours(ns, client, ns.job_id, e) from None
    print(f"wrote {path}")
    return exitcodes.OK


def cmd_list(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        jobs = client.jobs("", ns.limit)
    if ns.json:
        for j in jobs:
            print(job_json(j))
        return exitcodes.OK
    print(f"jobs of {client.signer.address} (key {ns.key})", file=sys.stderr)
    print(f"{'job':<14} {'state':<10} {'kind':<10} {'tasks':>11}  submitted")
    for j in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_ms / 1000))
        print(f"{j.job_id[:12]}.. {j.state.value:<10} {j.kind:<10} {j.tasks_done:>5}/{j.tasks_total:<5}  {when}")
    return exitcodes.OK


def cmd_nodes(ns: argparse.Namespace) -> int:
    now = time.time() * 1000
    with _client(ns) as client:
        nodes = client.nodes()
    if ns.json:
        for n in nodes:
            print(job_json(n))
        return exitcodes.OK
    print(
        f"{'node':<44} {'device':<6} {'memory':>9} {'done':>6} {'failed':>6} {'rejected':>8} "
        f"{'verified':>8} {'caught':>6} {'streak':>6} {'slashed':>14}  state"
    )
    for n in nodes:
        state = "draining" if n.draining else "backoff" if n.backoff_until_ms > now else "ok"
        seen = max(0.0, (now - n.last_seen_ms) / 1000)  # clocks of two hosts differ: never "-6s ago"
        state += f", seen {seen:.0f}s ago"
        print(
            f"{n.address:<44} {n.device_kind:<6} {n.memory_bytes / (1 << 30):>7.1f}Gi {n.completed:>6} "
            f"{n.failures:>6} {n.rejections:>8} {n.verified:>8} {n.caught:>6} {n.consecutive_valid:>6} "
            f"{format_eth(n.slashed_wei) if n.slashed_wei else '-':>14}  {state}"
        )
    return exitcodes.OK


def cmd_cancel(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        try:
            print_job(client.cancel(job_id_of(client, ns.job_id)))
        except TensorGridError as e:
            raise not_yours(ns, client, ns.job_id, e) from None
    return exitcodes.OK


def add_submit_parser(job: Any, common: argparse.ArgumentParser) -> None:
    """`tensorgrid job submit`: options left out take the InferenceSpec (and VerificationSpec) defaults,
    which --help reads off the spec classes."""
    s = job.add_parser("submit", parents=[common], help="upload a model and inputs, submit an inference job")
    s.add_argument("--model", type=Path, required=True, help="torch.export program (.pt2)")
    s.add_argument("--inputs", type=Path, required=True, help="safetensors file; rows along dim 0")
    s.add_argument(
        "--input-name",
        action="append",
        dest="input_names",
        help="tensor passed to the model, in order (repeat; default: all, sorted)",
    )
    for flag, kind, what, default in (
        ("--shard-rows", int, "rows per task", InferenceSpec.shard_rows),
        ("--batch-size", int, "rows per forward pass on a node (0: whole shard)", InferenceSpec.batch_size),
        ("--time-limit", int, "seconds a node may spend on one task", InferenceSpec.task_time_limit_s),
        ("--memory-limit-gib", float, "memory one task may use on a node", InferenceSpec.task_memory_limit_bytes / GiB),
        ("--reward-wei", int, "paid per accepted task from the job's escrow", InferenceSpec.reward_per_task_wei),
    ):
        s.add_argument(flag, type=kind, help=f"{what} (default: {default})")
    s.add_argument("--device", choices=DEVICES, help=f"(default: {InferenceSpec.device})")
    s.add_argument(
        "--verification",
        choices=VERIFY_MODES,
        help="spotcheck: re-run a random sample of rows of each result on another node (a few %% extra); "
        f"replicate: re-run every row (2x); none: signatures and hashes only (default: {VerificationSpec.mode})",
    )
    s.add_argument(
        "--target-detection",
        type=float,
        help="spotcheck: chance a node corrupting 1%% of its rows is caught in the job "
        f"(default: {VerificationSpec.target_detection})",
    )
    s.add_argument("--watch", action="store_true", help="follow progress until the job ends")
    s.add_argument("-o", "--output", type=Path, help="with --watch: download the result here")


def inference_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """The InferenceSpec fields `job submit` was given; the spec's defaults fill in the rest."""
    memory = None if ns.memory_limit_gib is None else int(ns.memory_limit_gib * GiB)
    settings = given(
        (
            ("input_names", tuple(ns.input_names) if ns.input_names else None),
            ("shard_rows", ns.shard_rows),
            ("batch_size", ns.batch_size),
            ("device", ns.device),
            ("task_time_limit_s", ns.time_limit),
            ("task_memory_limit_bytes", memory),
            ("reward_per_task_wei", ns.reward_wei),
        )
    )
    # Always an explicit policy: the bytes the command has always signed.
    policy = given((("mode", ns.verification), ("target_detection", ns.target_detection)))
    settings["verification"] = VerificationSpec(**policy)
    return settings


def main(argv: list[str] | None = None) -> int:
    ns = config.parse_args(build_parser(), argv, (*SETTINGS, DASHBOARD_URL))
    if getattr(ns, "log_format", "text") == "json":
        # the CLI's own output stays as it is; only its log records (TLS and transfer warnings) become JSON
        setup_logging(name="tensorgrid", fmt="json", level=logging.WARNING)
    try:
        if ns.group in ("demo", "devnet"):  # a local grid runs both daemons and a chain
            extras.require(f"tensorgrid {ns.group}", "node", "coordinator", "chain")
        if ns.group == "demo":
            from tensorgrid.demo import run_demo

            return run_demo(ns)
        if ns.group == "devnet":
            from tensorgrid import devnet

            if ns.command == "up":
                return devnet.up(ns.dir, ns.nodes, ns.epoch_seconds)
            return devnet.status(ns.dir) if ns.command == "status" else devnet.down(ns.dir)
        if ns.group == "endpoint":
            return cmd_endpoint(ns, _client)
        if ns.group == "dashboard":
            return cmd_dashboard(ns, _client)
        if ns.group == "completion":
            print(script(build_parser(), ns.shell), end="")
            return exitcodes.OK
        handler = {
            "submit": cmd_submit,
            "submit-training": lambda ns: cmd_submit_training(ns, _client),
            "submit-generate": lambda ns: cmd_submit_generate(ns, _client),
            "watch": cmd_watch,
            "status": cmd_status,
            "result": cmd_result,
            "list": cmd_list,
            "cancel": cmd_cancel,
            "nodes": cmd_nodes,
        }[ns.command]
        return handler(ns)
    except TensorGridError as e:
        print(f"error: {e}", file=sys.stderr)
        code = getattr(e, "code", None)
        return exitcodes.UNAVAILABLE if code is not None and code.name == "UNAVAILABLE" else exitcodes.ERROR
    except ModuleNotFoundError as e:  # e.g. --chain-rpc without tensorgrid[chain]
        missing = extras.explain(e, "this command")
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return exitcodes.ERROR
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
