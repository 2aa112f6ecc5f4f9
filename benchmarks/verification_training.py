"""Training audit benchmark: what checkpoint reveals and segment replays cost, and what they catch.

Starts a coordinator and 2 node daemons (one torch thread each) on 127.0.0.1 and runs, in
the same run, the same DiLoCo job on scikit-learn's digits twice:
  * baseline: verification "none" (no audit, no reveal);
  * audited: the default spot-check policy; new nodes are audited on every result, so this
    is the worst case (a trusted node is audited at the floor rate, 10 %).
Overheads of the audited run: coordinator replay + check compute over the job's training
compute (sum of the nodes' task seconds, measured as the same inner steps run locally; for
this small model loading the program dominates a replay, so the replayed inner steps over
the job's trained inner steps are reported too), reveal bytes over pseudo-gradient bytes
(and per audit), and wall time against the baseline. Detection:
lazy (stop early / skip steps) and scaling trainers, checked on every segment a draw could
pick (the real check, in process) and on the grid (caught counts).

python -m benchmarks.verification_training      (last line: one JSON object)
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import create_engine, select

from benchmarks._common import emit
from benchmarks.training import make_assets
from coordinator.db.schema import training_audits
from coordinator.services.training.replay import AuditCase, check_reveal, reveal_plan
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import TrainingSpec, VerificationSpec
from tensorgrid.training.commitments import checkpoint_steps
from tensorgrid.training.data import plan_split, round_shards, write_rows
from tensorgrid.training.inner import InnerSettings, checkpoint_name, write_result
from tensorgrid.training.outer import initial_weights
from tensorgrid.types import BlobRef, JobState
from tests.integration.train_adversaries import TRAINERS, SimTrainer

NODES = 2
JOB: dict[str, Any] = {"rounds": 6, "workers_per_round": 2, "quorum": 1.0, "device": "cpu", "seed": 0}


def run_job(client: Client, grid: LocalGrid, assets: tuple[Path, Path, Path, int], **extra: Any) -> dict[str, Any]:
    dataset, train, evalp, _ = assets
    started = time.monotonic()
    job = client.submit_training(train, dataset, eval_program=evalp, **{**JOB, **extra})
    metrics = list(client.watch_rounds(job.job_id))
    seconds = time.monotonic() - started
    final = client.job(job.job_id)
    if final.state != JobState.SUCCEEDED:
        raise SystemExit(f"the training job {final.state.value}: {final.error}")
    engine = create_engine(f"sqlite:///{grid.root / 'coordinator' / 'coordinator.db'}")
    with engine.connect() as conn:
        rows = conn.execute(select(training_audits).where(training_audits.c.job_id == job.job_id)).all()
    engine.dispose()
    spec = TrainingSpec(train_program=BlobRef("0" * 64, 0), dataset=BlobRef("0" * 64, 0), **{**JOB, **extra})
    marks = checkpoint_steps(spec.inner_steps, spec.checkpoint_every)
    reveal_bytes = 0
    for r in rows:
        for sha in _revealed(r.revealed):
            reveal_bytes += grid.root.joinpath("coordinator").rglob(sha).__next__().stat().st_size
    return {
        "seconds": round(seconds, 2),
        "accuracy": metrics[-1]["accuracy"],
        "bytes_up": sum(m["bytes_up"] for m in metrics),
        "audits": len(rows),
        "audits_passed": sum(r.state == "passed" for r in rows),
        "replay_seconds": round(sum((r.replay_ms or 0) for r in rows) / 1000, 3),
        "reveal_bytes": reveal_bytes,
        # an audit replays steps [0, marks[segment + 1]) (before: [marks[segment], marks[segment + 1]))
        "replayed_steps": sum(marks[int(r.segment) + 1] for r in rows),
        "trained_steps": spec.rounds * spec.workers_per_round * spec.inner_steps,
    }


def _revealed(raw: str) -> list[str]:
    import json

    return list(json.loads(raw).values())


def training_seconds(assets: tuple[Path, Path, Path, int], root: Path) -> float:
    """The job's training compute: every worker's inner steps, run here with one thread."""
    dataset, train, _, rows = assets
    spec = TrainingSpec(train_program=BlobRef("0" * 64, 0), dataset=BlobRef("0" * 64, 0), **JOB)
    initial_weights(train, root / "w0.safetensors")
    split = plan_split(spec, rows)
    total = 0.0
    for r in range(spec.rounds):
        for slot, shard_rows in enumerate(round_shards(spec, split, r)):
            shard = root / f"shard-{r}-{slot}.safetensors"
            write_rows(dataset, shard_rows, shard)
            s = InnerSettings.for_task(spec, r, slot)
            started = time.perf_counter()
            TRAINERS["honest"](train, root / "w0.safetensors", shard, s, root / f"ck-{r}-{slot}")
            total += time.perf_counter() - started
    return total


def detection(assets: tuple[Path, Path, Path, int], root: Path) -> dict[str, Any]:
    """Each cheater against every segment a draw can pick: the fraction of audits that catch it."""
    dataset, train, _, rows = assets
    spec = TrainingSpec(train_program=BlobRef("0" * 64, 0), dataset=BlobRef("0" * 64, 0), **JOB)
    shard = root / "shard-0-0.safetensors"
    s = InnerSettings.for_task(spec, 0, 0)
    out: dict[str, Any] = {}
    for name, trainer in TRAINERS.items():
        ckpt, result = root / f"det-{name}", root / f"det-{name}.out"
        r = trainer(train, root / "w0.safetensors", shard, s, ckpt)
        write_result(r, result, spec.compression)
        caught = 0
        segments = len(r.checkpoint_steps) - 1
        for j in range(segments):
            revealed = {st: ckpt / checkpoint_name(st) for st in reveal_plan(r.checkpoint_steps, j)}
            case = AuditCase(train, shard, root / "w0.safetensors", result, s, r.final_commitment, j, revealed)
            caught += not check_reveal(case).passed
        out[name] = round(caught / segments, 3)
    return out


def adversary_run(client: Client, grid: LocalGrid, assets: tuple[Path, Path, Path, int], root: Path) -> dict[str, Any]:
    """The audited job with a lazy, a step-skipping and a scaling trainer among the honest daemons."""
    dataset, train, evalp, _ = assets
    work = root / "sim"
    work.mkdir()
    lock = asyncio.Lock()
    advs = [SimTrainer(grid.target, b, work, lock) for b in ("lazy", "lazy_skip", "scaler")]

    async def scenario() -> str:
        stop = asyncio.Event()
        runs = [asyncio.create_task(a.run(stop)) for a in advs]
        await asyncio.sleep(0.3)
        job = client.submit_training(train, dataset, eval_program=evalp, **{**JOB, "workers_per_round": 4,
                                                                          "quorum": 0.5})  # fmt: skip
        while client.job(job.job_id).state in (JobState.QUEUED, JobState.RUNNING):
            await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
        return job.job_id

    job_id = asyncio.run(scenario())
    record = {n.address.lower(): n for n in client.nodes()}
    metrics = client.round_metrics(job_id)
    return {
        "accuracy": metrics[-1]["accuracy"] if metrics else None,
        "state": client.job(job_id).state.value,
        **{a.behaviour: {"submitted": a.submitted, "caught": record[a.address.lower()].caught} for a in advs},
    }


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="tg-bench-vtrain-") as tmp:
        root = Path(tmp)
        assets = make_assets(root)
        compute = training_seconds(assets, root)
        caught = detection(assets, root)
        with LocalGrid(root / "grid", coordinator_args=["--heartbeat-ms", "300", "--lease-ttl-ms", "1500"]) as grid:
            grid.start_coordinator()
            for i in range(NODES):
                grid.start_node(f"node{i}", "--device", "cpu", "--threads", "1")
            with Client(grid.target, Signer.generate()) as client:
                none = VerificationSpec(mode="none")
                run_job(client, grid, assets, verification=none, rounds=1)  # warm the daemons' workers
                baseline = run_job(client, grid, assets, verification=none)
                print(f"baseline (verification none): {baseline}", flush=True)
                audited = run_job(client, grid, assets)
                print(f"audited (spot-check, every result of new nodes): {audited}", flush=True)
                grid_catch = adversary_run(client, grid, assets, root)
                print(f"adversaries on the grid: {grid_catch}", flush=True)
    emit(
        {
            "benchmark": "verification_training",
            "job": JOB,
            "baseline": baseline,
            "audited": audited,
            "training_compute_seconds": round(compute, 3),
            "replay_over_training_compute": round(audited["replay_seconds"] / compute, 3),
            "reveal_over_pseudo_gradient_bytes": round(audited["reveal_bytes"] / max(1, audited["bytes_up"]), 2),
            "reveal_bytes_per_audit": round(audited["reveal_bytes"] / max(1, audited["audits"])),
            "replayed_over_trained_steps": round(audited["replayed_steps"] / audited["trained_steps"], 3),
            "wall_time_ratio": round(audited["seconds"] / baseline["seconds"], 2),
            "detection_per_audit": caught,
            "grid_adversaries": grid_catch,
        }
    )


if __name__ == "__main__":
    main()
