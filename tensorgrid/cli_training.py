"""`tensorgrid job submit-training`: a train-mode program and a dataset in, DiLoCo rounds watched,
final weights out (docs/TRAINING.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tensorgrid import exitcodes
from tensorgrid.config import given
from tensorgrid.errors import TensorGridError
from tensorgrid.report import ended_tasks, print_job, round_line
from tensorgrid.spec import (
    COMPRESSIONS,
    DEVICES,
    LOSSES,
    VERIFY_MODES,
    AdamW,
    NesterovSGD,
    TrainingSpec,
    VerificationSpec,
)

# (flag, TrainingSpec field or "optimizer.field", type, help). The command line never repeats a
# spec default: a flag left out is left out of the spec, and --help reads the default off the spec.
_TRAINING_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--rounds", "rounds", int, "outer rounds"),
    ("--inner-steps", "inner_steps", int, "AdamW steps per worker per round"),
    ("--workers", "workers_per_round", int, "workers (tasks) per round"),
    ("--batch-size", "batch_size", int, "rows per inner step"),
    ("--lr", "inner_optimizer.lr", float, "inner AdamW learning rate"),
    ("--weight-decay", "inner_optimizer.weight_decay", float, "inner AdamW weight decay"),
    ("--warmup-steps", "inner_warmup_steps", int, "inner steps of each task's linear learning-rate warm-up"),
    (
        "--final-lr",
        "inner_final_lr",
        float,
        "inner learning rate at the job's last inner step, reached along a cosine from --lr that runs over "
        "all rounds; None: a constant --lr",
    ),
    ("--outer-lr", "outer_optimizer.lr", float, "outer Nesterov learning rate"),
    ("--outer-momentum", "outer_optimizer.momentum", float, "outer Nesterov momentum"),
    (
        "--outer-plain-rounds",
        "outer_plain_rounds",
        int,
        "rounds at the start whose outer step is the plain average of the workers' weights (no momentum); "
        "the Nesterov steps begin after them. None: from round 0",
    ),
    ("--quorum", "quorum", float, "fraction of a round's workers that closes it"),
    ("--round-deadline", "round_deadline_s", int, "seconds before a round closes with what it has"),
    ("--eval-fraction", "eval_fraction", float, "share of rows held out for evaluation"),
    ("--seed", "seed", int, "data split, shards and dropout seed"),
    ("--checkpoint-every", "checkpoint_every", int, "inner steps between committed checkpoints (audits replay to one)"),
    ("--time-limit", "task_time_limit_s", int, "seconds a node may spend on one task"),
    ("--max-attempts", "max_attempts", int, "attempts per task before the job fails"),
    (
        "--reward-wei",
        "reward_per_task_wei",
        int,
        "wei paid per accepted pseudo-gradient; with --chain-rpc the escrow is funded with "
        "reward × rounds × workers once the coordinator has validated the job",
    ),
)
_OPTIMIZERS: dict[str, type] = {"inner_optimizer": AdamW, "outer_optimizer": NesterovSGD}


def _training_default(path: str) -> Any:
    owner, _, name = path.rpartition(".")
    return getattr(_OPTIMIZERS[owner] if owner else TrainingSpec, name)  # a dataclass field's plain default


def add_training_parser(job: Any, common: argparse.ArgumentParser) -> None:
    """`tensorgrid job submit-training`: options left out take the TrainingSpec defaults."""
    t = job.add_parser(
        "submit-training",
        parents=[common],
        help="upload a train-mode program and a dataset, submit a training job",
        description="DiLoCo training on the grid: each round every worker runs --inner-steps AdamW steps of "
        "--batch-size rows on its own shard; the coordinator averages their pseudo-gradients and takes a "
        "Nesterov step. One round uses batch × inner steps × workers distinct training rows. "
        "docs/TRAINING.md: exporting the program, the dataset format, every setting.",
    )
    t.add_argument("--program", type=Path, required=True, help="train-mode torch.export program (.pt2)")
    t.add_argument("--eval-program", type=Path, help="eval-mode program for held-out metrics (default: --program)")
    t.add_argument(
        "--dataset", type=Path, required=True, help="safetensors: 'features' + 'labels', or 'tokens' (docs/TRAINING.md)"
    )
    t.add_argument("--weights", type=Path, help="starting weights, safetensors (default: the program's own)")
    t.add_argument("--loss", choices=LOSSES, help=f"(default: {_training_default('loss')})")
    for flag, path, kind, what in _TRAINING_FLAGS:
        metavar = flag.removeprefix("--").upper().replace("-", "_")
        t.add_argument(
            flag, type=kind, dest=_dest(path), metavar=metavar, help=f"{what} (default: {_training_default(path)})"
        )
    t.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        help=f"pseudo-gradient encoding (default: {_training_default('compression')})",
    )
    t.add_argument("--device", choices=DEVICES, help=f"(default: {_training_default('device')})")
    t.add_argument(
        "--verification",
        choices=VERIFY_MODES,
        help="spotcheck: replay a drawn segment of sampled results' inner steps on the coordinator "
        "(new nodes always); replicate: audit every result; none: signatures and hashes only "
        f"(default: {VerificationSpec.mode})",
    )
    t.add_argument("--watch", action="store_true", help="print each round's metrics until the job ends")
    t.add_argument("-o", "--output", type=Path, help="with --watch: download the final weights here (default: none)")
    t.add_argument("--program-output", type=Path, help="with -o: also download the (eval) program here (default: none)")


def _dest(path: str) -> str:
    return path.replace(".", "_")


def training_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """The TrainingSpec fields `job submit-training` was given; the spec's defaults fill in the rest."""
    flags = given((path, getattr(ns, _dest(path))) for _, path, _, _ in _TRAINING_FLAGS)
    settings = given((("loss", ns.loss), ("compression", ns.compression), ("device", ns.device)))
    for owner, cls in _OPTIMIZERS.items():
        chosen = {path.partition(".")[2]: v for path, v in flags.items() if path.startswith(owner + ".")}
        if chosen:
            settings[owner] = cls(**chosen)
    settings.update({path: v for path, v in flags.items() if "." not in path})
    if ns.verification is not None:  # left out, the spec keeps None: the default policy, older specs' bytes
        settings["verification"] = VerificationSpec(mode=ns.verification)
    return settings


def cmd_submit_training(ns: argparse.Namespace, client_for: Any) -> int:
    from tensorgrid.progress import byte_progress

    with client_for(ns) as client, byte_progress("uploading") as progress:
        job = client.submit_training(
            ns.program,
            ns.dataset,
            eval_program=ns.eval_program,
            initial_weights=ns.weights,
            progress=progress,
            **training_settings(ns),
        )
    print(f"submitted training job {job.job_id}")
    if not ns.watch:
        return exitcodes.OK
    with client_for(ns) as client:
        try:
            for metrics in client.watch_rounds(job.job_id):
                print(round_line(metrics), flush=True)
        except TensorGridError as e:
            print(f"error: {e}", file=sys.stderr)
        final = client.job(job.job_id)
        print_job(final, ended_tasks(client.events_now(job.job_id)) if final.task_failures else 0)
        if final.state.value != "succeeded":
            return exitcodes.JOB_FAILED
        if ns.output:
            weights, program = client.training_result(job.job_id, ns.output, ns.program_output)
            print(f"wrote {weights}" + (f" and {program}" if program else ""))
    return exitcodes.OK
