"""`tensorgrid`: the submitter's command line (jobs) and the demo."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tensorgrid import exitcodes
from tensorgrid.errors import TensorGridError
from tensorgrid.types import JobInfo, JobVerification

DEFAULT_COORDINATOR = os.environ.get("TENSORGRID_COORDINATOR", "127.0.0.1:7070")
DEFAULT_KEY = Path(
    os.environ.get("TENSORGRID_KEY")
    or Path(os.environ.get("TENSORGRID_HOME", Path.home() / ".tensorgrid")) / "submitter.key"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tensorgrid",
        description="Submit PyTorch jobs to a TensorGrid coordinator and fetch their results.",
    )
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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--coordinator", default=DEFAULT_COORDINATOR, help="HOST:PORT (default: $TENSORGRID_COORDINATOR or %(default)s)"
    )
    common.add_argument(
        "--key", type=Path, default=DEFAULT_KEY, help="submitter key file, created on first use (default: %(default)s)"
    )
    common.add_argument(
        "--chain-rpc",
        default=os.environ.get("TENSORGRID_CHAIN_RPC", ""),
        help="settlement chain JSON-RPC URL: jobs are paid from an escrow funded by --key",
    )
    common.add_argument(
        "--deployment",
        type=Path,
        default=os.environ.get("TENSORGRID_DEPLOYMENT") or None,
        help="the contracts' deployments file (with --chain-rpc)",
    )
    s = job.add_parser("submit", parents=[common], help="upload a model and inputs, submit an inference job")
    s.add_argument("--model", type=Path, required=True, help="torch.export program (.pt2)")
    s.add_argument("--inputs", type=Path, required=True, help="safetensors file; rows along dim 0")
    s.add_argument(
        "--input-name",
        action="append",
        default=[],
        dest="input_names",
        help="tensor passed to the model, in order (repeat; default: all, sorted)",
    )
    s.add_argument("--shard-rows", type=int, default=256, help="rows per task (default: %(default)s)")
    s.add_argument("--batch-size", type=int, default=0, help="rows per forward pass on a node (0: whole shard)")
    s.add_argument("--device", choices=("any", "cpu", "cuda"), default="any")
    s.add_argument("--time-limit", type=int, default=600, help="seconds a node may spend on one task")
    s.add_argument("--memory-limit-gib", type=float, default=4.0, help="memory one task may use on a node")
    s.add_argument("--reward-wei", type=int, default=0, help="paid per accepted task from the job's escrow")
    s.add_argument(
        "--verification",
        choices=("spotcheck", "replicate", "none"),
        default="spotcheck",
        help="spotcheck: re-run a random sample of rows of each result on another node (a few %% extra); "
        "replicate: re-run every row (2x); none: signatures and hashes only (default: %(default)s)",
    )
    s.add_argument(
        "--target-detection",
        type=float,
        default=0.99,
        help="spotcheck: chance a node corrupting 1%% of its rows is caught in the job (default: %(default)s)",
    )
    s.add_argument("--watch", action="store_true", help="follow progress until the job ends")
    s.add_argument("-o", "--output", type=Path, help="with --watch: download the result here")
    w = job.add_parser("watch", parents=[common], help="follow a job's progress live")
    w.add_argument("job_id")
    st = job.add_parser("status", parents=[common], help="a job's state, result and verification report")
    st.add_argument("job_id")
    r = job.add_parser("result", parents=[common], help="download a finished job's result")
    r.add_argument("job_id")
    r.add_argument("-o", "--output", type=Path, required=True)
    ls = job.add_parser("list", parents=[common], help="list recent jobs")
    ls.add_argument("--mine", action="store_true", help="only jobs submitted with --key")
    ls.add_argument("--limit", type=int, default=20)
    c = job.add_parser("cancel", parents=[common], help="cancel a job you submitted")
    c.add_argument("job_id")
    add_training_parser(job, common)
    nodes = sub.add_parser("nodes", parents=[common], help="list the grid's nodes and their record")
    nodes.set_defaults(command="nodes")
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
    return Client(ns.coordinator, signer, chain=chain)


def _print_job(job: JobInfo) -> None:
    print(
        f"job {job.job_id}\n  state    {job.state.value}\n  kind     {job.kind}\n"
        f"  tasks    {job.tasks_done}/{job.tasks_total} done, {job.task_failures} failed attempts"
    )
    if job.result:
        print(f"  result   {job.result.sha256} ({job.result.size} bytes)")
    if job.error:
        print(f"  error    {job.error}")
    if job.verification is not None:
        print(f"  {verification_line(job.verification)}")


_OUTCOME_ORDER = ("verified", "caught", "unverified", "open", "disputed")


def format_eth(wei: int) -> str:
    """Exact: 1200000000000000 wei -> "0.0012 ETH"."""
    whole, frac = divmod(wei, 10**18)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".") + " ETH"


def verification_line(v: JobVerification) -> str:
    """One human line, e.g. "verification: spotcheck, 12 checks (11 verified, 1 caught),
    detection ≥ 99.0%, stake required 0.0012 ETH"."""
    if v.mode == "none" and not v.checks:
        return "verification: none (signature, lease holder and output hash only)"
    outcomes: dict[str, int] = {}
    for key, n in v.checks.items():
        outcome = key.rpartition(":")[2]
        outcomes[outcome] = outcomes.get(outcome, 0) + n
    order = sorted(outcomes, key=lambda o: (_OUTCOME_ORDER.index(o) if o in _OUTCOME_ORDER else 99, o))
    found = ", ".join(f"{outcomes[o]} {o}" for o in order)
    total = sum(outcomes.values())
    parts = [v.mode, f"{total} check{'s' if total != 1 else ''}" + (f" ({found})" if found else "")]
    if v.detection > 0:
        parts.append(f"detection ≥ {math.floor(v.detection * 1000) / 10:.1f}%")
    if v.required_stake_wei:
        parts.append(f"stake required {format_eth(v.required_stake_wei)}")
    if v.slashes:
        parts.append(f"{v.slashes} slash{'es' if v.slashes != 1 else ''} took {format_eth(v.slashed_wei)}")
    return "verification: " + ", ".join(parts)


def cmd_submit(ns: argparse.Namespace) -> int:
    from tensorgrid.progress import byte_progress
    from tensorgrid.spec import VerificationSpec

    with _client(ns) as client, byte_progress("uploading") as progress:
        job = client.submit_inference(
            ns.model,
            ns.inputs,
            progress=progress,
            input_names=tuple(ns.input_names),
            shard_rows=ns.shard_rows,
            batch_size=ns.batch_size,
            device=ns.device,
            task_time_limit_s=ns.time_limit,
            task_memory_limit_bytes=int(ns.memory_limit_gib * (1 << 30)),
            reward_per_task_wei=ns.reward_wei,
            verification=VerificationSpec(mode=ns.verification, target_detection=ns.target_detection),
        )
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

    with _client(ns) as client:
        job = watch_job(client, ns.job_id)
    _print_job(job)
    return exitcodes.OK if job.state.value == "succeeded" else exitcodes.JOB_FAILED


def cmd_status(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        _print_job(client.job(ns.job_id))
    return exitcodes.OK


def cmd_result(ns: argparse.Namespace) -> int:
    from tensorgrid.progress import byte_progress

    with _client(ns) as client, byte_progress("downloading") as progress:
        path = client.result(ns.job_id, ns.output, progress)
    print(f"wrote {path}")
    return exitcodes.OK


def cmd_list(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        jobs = client.jobs(client.signer.address if ns.mine else "", ns.limit)
    print(f"{'job':<14} {'state':<10} {'kind':<10} {'tasks':>11}  submitted")
    for j in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_ms / 1000))
        print(f"{j.job_id[:12]}.. {j.state.value:<10} {j.kind:<10} {j.tasks_done:>5}/{j.tasks_total:<5}  {when}")
    return exitcodes.OK


def cmd_nodes(ns: argparse.Namespace) -> int:
    now = time.time() * 1000
    with _client(ns) as client:
        nodes = client.nodes()
    print(
        f"{'node':<44} {'device':<6} {'memory':>9} {'done':>6} {'failed':>6} {'rejected':>8} "
        f"{'verified':>8} {'caught':>6} {'streak':>6} {'slashed':>14}  state"
    )
    for n in nodes:
        state = "draining" if n.draining else "backoff" if n.backoff_until_ms > now else "ok"
        seen = (now - n.last_seen_ms) / 1000
        state += f", seen {seen:.0f}s ago"
        print(
            f"{n.address:<44} {n.device_kind:<6} {n.memory_bytes / (1 << 30):>7.1f}Gi {n.completed:>6} "
            f"{n.failures:>6} {n.rejections:>8} {n.verified:>8} {n.caught:>6} {n.consecutive_valid:>6} "
            f"{format_eth(n.slashed_wei) if n.slashed_wei else '-':>14}  {state}"
        )
    return exitcodes.OK


def cmd_cancel(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        _print_job(client.cancel(ns.job_id))
    return exitcodes.OK


def add_training_parser(job: Any, common: argparse.ArgumentParser) -> None:
    """`tensorgrid job submit-training`: options left out take the TrainingSpec defaults."""
    t = job.add_parser(
        "submit-training", parents=[common], help="upload a train-mode program and a dataset, submit a training job"
    )
    t.add_argument("--program", type=Path, required=True, help="train-mode torch.export program (.pt2)")
    t.add_argument("--eval-program", type=Path, help="eval-mode program for held-out metrics (default: --program)")
    t.add_argument("--dataset", type=Path, required=True, help="safetensors with 'features' + 'labels', or 'tokens'")
    t.add_argument("--weights", type=Path, help="starting weights, safetensors (default: the program's own)")
    t.add_argument("--loss", choices=("cross_entropy", "mse"))
    for flag, kind, what in (
        ("--rounds", int, "outer rounds"),
        ("--inner-steps", int, "AdamW steps per worker per round"),
        ("--workers", int, "workers (tasks) per round"),
        ("--batch-size", int, "rows per inner step"),
        ("--lr", float, "inner AdamW learning rate"),
        ("--weight-decay", float, "inner AdamW weight decay"),
        ("--outer-lr", float, "outer Nesterov learning rate"),
        ("--outer-momentum", float, "outer Nesterov momentum"),
        ("--quorum", float, "fraction of a round's workers that closes it"),
        ("--round-deadline", int, "seconds before a round closes with what it has"),
        ("--eval-fraction", float, "share of rows held out for evaluation"),
        ("--seed", int, "data split, shards and dropout seed"),
        ("--time-limit", int, "seconds a node may spend on one task"),
    ):
        t.add_argument(flag, type=kind, help=what)
    t.add_argument("--compression", choices=("int8", "fp16", "none"), help="pseudo-gradient encoding")
    t.add_argument("--device", choices=("any", "cpu", "cuda"))
    t.add_argument("--watch", action="store_true", help="print each round's metrics until the job ends")
    t.add_argument("-o", "--output", type=Path, help="with --watch: download the final weights here")
    t.add_argument("--program-output", type=Path, help="with -o: also download the (eval) program here")


def _training_settings(ns: argparse.Namespace) -> dict[str, Any]:
    from tensorgrid.training.spec import AdamW, NesterovSGD

    given = {
        "loss": ns.loss,
        "rounds": ns.rounds,
        "inner_steps": ns.inner_steps,
        "workers_per_round": ns.workers,
        "batch_size": ns.batch_size,
        "quorum": ns.quorum,
        "round_deadline_s": ns.round_deadline,
        "eval_fraction": ns.eval_fraction,
        "seed": ns.seed,
        "task_time_limit_s": ns.time_limit,
        "compression": ns.compression,
        "device": ns.device,
    }
    settings = {k: v for k, v in given.items() if v is not None}
    inner = {k: v for k, v in (("lr", ns.lr), ("weight_decay", ns.weight_decay)) if v is not None}
    outer = {k: v for k, v in (("lr", ns.outer_lr), ("momentum", ns.outer_momentum)) if v is not None}
    if inner:
        settings["inner_optimizer"] = AdamW(**inner)
    if outer:
        settings["outer_optimizer"] = NesterovSGD(**outer)
    return settings


def round_line(m: dict[str, Any]) -> str:
    """One line per closed round, as `submit-training --watch` prints it."""
    acc = "" if m.get("accuracy") is None else f"  accuracy {100 * m['accuracy']:5.1f}%"
    loss = "-" if m.get("loss") is None else f"{m['loss']:.4f}"
    return (
        f"round {m['round'] + 1:>3}/{m['rounds']}  held-out loss {loss}{acc}  "
        f"workers {m['workers']}  sent {m['bytes_up'] / 1000:.1f} kB"
    )


def cmd_submit_training(ns: argparse.Namespace) -> int:
    from tensorgrid.progress import byte_progress

    with _client(ns) as client, byte_progress("uploading") as progress:
        job = client.submit_training(
            ns.program,
            ns.dataset,
            eval_program=ns.eval_program,
            initial_weights=ns.weights,
            progress=progress,
            **_training_settings(ns),
        )
    print(f"submitted training job {job.job_id}")
    if not ns.watch:
        return exitcodes.OK
    with _client(ns) as client:
        try:
            for metrics in client.watch_rounds(job.job_id):
                print(round_line(metrics), flush=True)
        except TensorGridError as e:
            print(f"error: {e}", file=sys.stderr)
        final = client.job(job.job_id)
        _print_job(final)
        if final.state.value != "succeeded":
            return exitcodes.JOB_FAILED
        if ns.output:
            weights, program = client.training_result(job.job_id, ns.output, ns.program_output)
            print(f"wrote {weights}" + (f" and {program}" if program else ""))
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.group == "demo":
            from tensorgrid.demo import run_demo

            return run_demo(ns)
        if ns.group == "devnet":
            from tensorgrid import devnet

            if ns.command == "up":
                return devnet.up(ns.dir, ns.nodes, ns.epoch_seconds)
            return devnet.status(ns.dir) if ns.command == "status" else devnet.down(ns.dir)
        handler = {
            "submit": cmd_submit,
            "submit-training": cmd_submit_training,
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
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
