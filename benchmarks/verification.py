"""Verification cost and power: compute spent on checks ÷ the job's compute, and the per-job
detection rate of a node that corrupts 1% of its output rows, for the default policy next
to full 2× replication, in the same run. Goal: ≤ 5% overhead at ≥ 99% detection
(anchor: BOINC's 2-replica quorum costs 100% extra).

Overhead comes from a real grid (coordinator + two node daemons): every task and every check
task the grid actually ran, and every re-execution the coordinator itself ran as referee
(disputes, and confirming two untrusted nodes' agreement on a few rows), is re-timed here with
the real inference code (forward passes, warm program); the overhead is Σ check time ÷ Σ task
time. Detection is a simulation over the job's real outputs: many jobs in which one new node
(checked always, as every node starts) runs all tasks and corrupts 1% of each shard's rows;
each result is checked as the policy says (its sampled rows compared with the coordinator's
real comparison code); a job counts as
detected when any check fails. The trusted-node case (checked at the floor rate) is reported too.

Decoys (the default policy's D = T tasks of a check's m rows, carved out of the shards so a
check is not told by its size) are counted as extra compute: the same rows in D more forward
calls, each costing a call's fixed part (decoys_overhead), over the plain shards' time. The run
also reports what share of the m-row tasks the nodes ran were checks: what a node recognising
checks by size would get right.

Shards are 4,096 rows (~0.16 s of this model on one core): a forward call costs ~2.5 ms
whatever its rows, so with 1,024-row shards (39 ms) each small check costs 7% of a task in
fixed overhead alone; real tasks are longer still.

    python -m benchmarks.verification [--rows 98304] [--shard-rows 4096] [--jobs 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from sqlalchemy import create_engine, select

from benchmarks._common import emit
from coordinator.db import schema as s
from coordinator.db.schema import checks, referee_rulings
from coordinator.services.verification.compare import rows_match
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import VerificationSpec
from tensorgrid.workloads.arrays import from_torch
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors

BATCH = 256


def build_model(width: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, width), torch.nn.GELU()]
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10)).eval()


def task_rows(db: Path, job_id: str) -> tuple[list[int], list[int], dict[str, int], list[int], VerificationSpec]:
    """Rows of the job's work tasks (in row order), of the check tasks its nodes ran, check kinds
    run, rows the coordinator re-ran as referee, and the job's stored policy (m pinned when it has
    decoys)."""
    engine = create_engine(f"sqlite:///{db}")
    t = s.tasks
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.c.kind, t.c.rows, t.c.state, checks.c.kind.label("check_kind"))
            .outerjoin(checks, checks.c.check_id == t.c.task_id)
            .where(t.c.job_id == job_id)
            .order_by(t.c.idx)
        ).all()
        stored = conn.execute(select(s.job_policies.c.policy).where(s.job_policies.c.job_id == job_id)).scalar()
        ruled = conn.execute(
            select(referee_rulings.c.rows_limit, t.c.rows)
            .join(t, t.c.task_id == referee_rulings.c.check_id)
            .where(referee_rulings.c.job_id == job_id, referee_rulings.c.state == "ruled")
        ).all()
    engine.dispose()
    work = [r.rows for r in rows if r.kind == "inference"]
    ran = [r for r in rows if r.kind == "spotcheck" and r.state == "done"]
    refereed = [min(r.rows_limit, r.rows) if r.rows_limit else r.rows for r in ruled]
    policy = VerificationSpec(**json.loads(stored)) if stored else VerificationSpec(mode="none")
    return work, [r.rows for r in ran], dict(Counter(r.check_kind for r in ran)), refereed, policy


def forward_seconds(model: Path, root: Path, rows: int, repeats: int = 5) -> float:
    """Fastest of `repeats` forward times of an inference task of `rows` rows (the program is
    warm; the fastest, because on a shared machine the others measure its load)."""
    x = root / f"x{rows}.safetensors"
    save_tensors({"x": torch.rand(rows, 64)}, x)
    times = [
        run_inference(model, x, root / "y.safetensors", batch_size=BATCH, device="cpu").seconds for _ in range(repeats)
    ]
    return min(times)


def overhead(model: Path, root: Path, work: list[int], checks: list[int], cache: dict[int, float]) -> float:
    for n in {*work, *checks}:
        if n not in cache:
            cache[n] = forward_seconds(model, root, n)
    return sum(cache[n] for n in checks) / sum(cache[n] for n in work)


def decoys_overhead(
    model: Path, root: Path, plain: list[int], decoys: int, m: int, shard: int, cache: dict[int, float]
) -> float:
    """Decoys' extra compute over the plain shards': the same rows in `decoys` more forward calls,
    so each costs a call's fixed part, t(m) - m·t(S)/S (a linear fit through the two sizes, which
    the few rows' noise in timing shards of S - m rows would swamp)."""
    if decoys == 0:
        return 0.0
    for n in (m, shard, *plain):
        if n not in cache:
            cache[n] = forward_seconds(model, root, n)
    fixed = max(0.0, cache[m] - m * cache[shard] / shard)
    return decoys * fixed / sum(cache[n] for n in plain)


def detection(
    policy: VerificationPolicy, output: torch.Tensor, pieces: list[int], rate: float, jobs: int, rng: random.Random
) -> float:
    """Fraction of simulated jobs in which a node corrupting 1% of each shard's rows is caught
    (the job's tasks as planned: `pieces` rows each, in order). It leaves its decoys alone: it
    sees they are as small as checks, and corrupting one would be caught by the decoy's check."""
    bounds = [sum(pieces[:i]) for i in range(len(pieces) + 1)]
    shards = [output[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    caught = 0
    for _ in range(jobs):
        for honest in shards:
            n = honest.shape[0]
            if policy.decoys and n == policy.sample_rows(rate, n) < max(pieces):
                continue  # a decoy: left honest
            if rng.random() >= rate:
                continue
            bad = set(rng.sample(range(n), max(1, round(n * policy.spec.corrupt_fraction))))
            m = policy.sample_rows(rate, n)
            sample = rng.sample(range(n), m)
            if not bad.intersection(sample):
                continue  # the corrupted rows were not sampled: the re-executed rows agree
            cheat = honest.clone()
            cheat[list(bad)] += 0.5
            idx = torch.tensor(sample)
            if not rows_match({"o": from_torch(honest[idx])}, {"o": from_torch(cheat[idx])}):
                caught += 1
                break
    return caught / jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=98_304)
    p.add_argument("--shard-rows", type=int, default=4096)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--jobs", type=int, default=2000, help="simulated jobs for the detection rate")
    ns = p.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(7)
    out: dict[str, object] = {"benchmark": "verification", "rows": ns.rows, "shard_rows": ns.shard_rows}
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        root = Path(tmp)
        model, inputs = root / "model.pt2", root / "inputs.safetensors"
        export_program(build_model(ns.width, ns.depth), (torch.rand(4, 64),), model)
        save_tensors({"x": torch.rand(ns.rows, 64, generator=torch.Generator().manual_seed(1))}, inputs)
        policies = {
            "default": VerificationSpec(),
            "decoys_1": VerificationSpec(decoys=1),  # D = T decoys, asked for: what hiding a check's size costs
            "replicate_2x": VerificationSpec(mode="replicate"),
        }
        times: dict[int, float] = {}
        with LocalGrid(root / "grid") as grid:
            grid.start_coordinator()
            for i in range(2):
                grid.start_node(f"node{i}", "--device", "cpu", "--threads", "1")
            with Client(grid.target, Signer.generate()) as client:
                for name, spec in policies.items():
                    start = time.monotonic()
                    job = client.submit_inference(
                        model, inputs, shard_rows=ns.shard_rows, batch_size=BATCH, device="cpu", verification=spec
                    )
                    final = client.wait(job.job_id)
                    assert final.state.value == "succeeded", final.error
                    wall = time.monotonic() - start
                    client.result(job.job_id, root / f"{name}.safetensors")
                    db = grid.root / "coordinator" / "coordinator.db"
                    work, ran, kinds, refereed, stored = task_rows(db, job.job_id)
                    n_decoys = len(work) - -(-ns.rows // ns.shard_rows)
                    policy = VerificationPolicy(stored, len(work), ns.shard_rows, decoys=n_decoys)
                    result = load_tensors(root / f"{name}.safetensors")["output"]
                    new = detection(policy, result, work, 1.0, ns.jobs, rng)
                    trusted = detection(policy, result, work, policy.check_rate(1 << 30), ns.jobs, rng)
                    plain = [min(ns.shard_rows, ns.rows - a) for a in range(0, ns.rows, ns.shard_rows)]
                    check_cost = overhead(model, root, plain, ran + refereed, times)
                    m = policy.sample_rows(1.0, ns.shard_rows)
                    decoy_cost = decoys_overhead(model, root, plain, n_decoys, m, ns.shard_rows, times)
                    m_checks = sum(1 for r in ran if r == m)
                    out[name] = {
                        "overhead": round(check_cost + decoy_cost, 4),
                        "overhead_checks": round(check_cost, 4),
                        "overhead_decoys": round(decoy_cost, 4),
                        "overhead_nodes_only": round(overhead(model, root, plain, ran, times), 4),
                        "decoys": n_decoys,
                        "checks_among_m_row_tasks": round(m_checks / max(1, m_checks + n_decoys), 4),
                        "referee_runs": len(refereed),
                        "rows_refereed": sum(refereed),
                        "check_kinds_run": kinds,
                        "detection_new_node": round(new, 4),
                        "detection_trusted_node": round(trusted, 4),
                        "predicted_detection_new_node": round(policy.detection(1.0), 4),
                        "predicted_detection_trusted_node": round(policy.worst_detection, 4),
                        "tasks": len(work),
                        "check_tasks_run": len(ran),
                        "rows_checked": sum(ran),
                        "sample_rows_new_node": m,
                        "grid_wall_s": round(wall, 2),
                    }
                    print(name, out[name], flush=True)
    out["goal"] = {"overhead_max": 0.05, "detection_min": 0.99, "anchor_boinc_2x_overhead": 1.0}
    emit(out)


if __name__ == "__main__":
    main()
