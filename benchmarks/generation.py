"""Generation throughput: tokens/s of a generation job on a fresh 2-node grid vs the same
decoding loop in-process, same run. Goal: grid tokens/s per node ≥ 0.9 × in-process tokens/s.

The decoder is a GPT-style transformer built here from torch.nn (tests/decoders.py), exported
as one full-sequence program. The grid's time runs from submit (uploads included) to the result
downloaded; nodes are started beforehand, as volunteers' daemons would be. The job carries the
default verification policy (`--verification none` to leave it out): the nodes are new, so every
result is checked by the other node and the coordinator's referee confirms each check.

Fair both ways: each node's task worker and the in-process run use the same torch threads
(`--threads`, default 1: on 2 cores, 2 nodes × 1 thread against 1 thread in process is the
per-node comparison), and the in-process run is a fresh interpreter with what a node's warm
worker has imported, that loads the program and decodes in the same forward batches a node does
(one shard's prompts at a time; one batch of every prompt was a third slower per token here).

On busy cores the wall-clock ratio mostly measures the machine: each of two processes gets less
of it than one does. So the run also reports, same run: `split_s`, the same work on bare
processes (one per node, each on a node's share of the prompts, started together) and
`grid_vs_split`, the grid's speed against them (1.0: the grid costs nothing); `cpu_ratio`, the
in-process CPU seconds over all of the grid's (workers, node daemons, coordinator, client); and
where the grid's time went (per node: fetch, program load, decoding, submit, idle; which node
ran which shard and when).

Verification's cost, same run (`verification`): CPU seconds of the check tasks on the nodes and
of the coordinator's referee (its sandboxed child, program load included) over the CPU seconds of
the job's shards on the nodes (program loads left out of both), with each part per prompt and
per token (the prompts here have no stop token: every prompt generates max-new tokens). The
default policy's budget is 5% (README, "Verification").

    python -m benchmarks.generation [--seconds 30] [--threads 1] [--nodes 2] [--shards 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import emit
from benchmarks._gridtime import GridCpu, breakdown, start_gate
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import VerificationSpec
from tensorgrid.workloads.prompts import job_seeds
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.decoders import TinyGPT, export_decoder

VOCAB, CONTEXT = 96, 128
PROMPT_LEN = (8, 32)
SEED = 7
MIN_SHARD = 8  # prompts: a shard of 1-2 prompts pays the per-step overhead for too few rows


def settings(max_new: int) -> dict[str, object]:
    return {"max_new_tokens": max_new, "temperature": 0.8, "top_k": 40, "seed": SEED}


def write_prompts(path: Path, n: int) -> None:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(PROMPT_LEN[0], PROMPT_LEN[1] + 1, (n,), generator=g)
    save_tensors({"tokens": torch.randint(0, VOCAB, (n, PROMPT_LEN[1]), generator=g), "lengths": lengths}, path)


def _decode_code(model: Path, prompts: Path, out: Path, ns: argparse.Namespace, batch: int, go: Path | None) -> str:
    """run_generation in a fresh interpreter with what a node's warm worker has imported (torch,
    what loading a program needs) and its thread count, `batch` prompts per forward batch (as a
    node decodes a shard); with `go`, it writes `out`.ready when imported and starts once `go`
    exists. Prints seconds with the program's load, seconds decoding, CPU seconds (with the load),
    tokens, CPU seconds decoding."""
    wait = start_gate(out, go)
    return (
        "import resource, time, torch\n"
        "from tensorgrid.workloads.generation import DecodeSettings, run_generation\n"
        "from tensorgrid.workloads.model import load_program\n"
        "from tensorgrid.workloads.programs import warm_imports\n"
        "warm_imports()\n"
        f"torch.set_num_threads({ns.threads})\n"
        f"s = DecodeSettings.from_dict({{'vocab_size': {VOCAB}, 'batch_size': {batch}, **{settings(ns.max_new)!r}}})\n"
        "cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])\n"
        f"{wait}"
        "t, c = time.monotonic(), cpu()\n"
        f"module = load_program({str(model)!r}, 'cpu')\n"
        "d = cpu()\n"
        f"stats = run_generation({str(model)!r}, {str(prompts)!r}, {str(out)!r}, s, device='cpu', module=module)\n"
        "print(time.monotonic() - t, stats.seconds, cpu() - c, stats.tokens, cpu() - d)\n"
    )


def _parse(stdout: str) -> tuple[float, float, float, int, float]:
    seconds, decoding, cpu, tokens, decoding_cpu = stdout.strip().splitlines()[-1].split()
    return float(seconds), float(decoding), float(cpu), int(tokens), float(decoding_cpu)


def local_run(
    model: Path, prompts: Path, out: Path, ns: argparse.Namespace, batch: int
) -> tuple[float, float, float, int, float]:
    """(seconds with the program's load, seconds decoding, CPU seconds, tokens, CPU seconds
    decoding) in process (_decode_code)."""
    code = _decode_code(model, prompts, out, ns, batch, None)
    return _parse(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def split_run(model: Path, prompts: Path, root: Path, ns: argparse.Namespace, batch: int) -> tuple[float, float]:
    """Wall seconds of `ns.nodes` in-process runs started together, each on its share of the
    prompts (what each node decodes), and their CPU seconds: what this machine gives that many
    one-node processes right now, with no grid (the grid's floor on busy cores)."""
    tensors = load_tensors(prompts)
    n = tensors["tokens"].shape[0]
    go = root / "go"
    go.unlink(missing_ok=True)
    procs, ready = [], []
    for i, part in enumerate(torch.arange(n).tensor_split(ns.nodes)):
        path, out = root / f"part{i}.safetensors", root / f"part{i}_out.safetensors"
        seeds = torch.from_numpy(job_seeds(SEED, 0, n))[part]  # as a shard carries
        save_tensors({"tokens": tensors["tokens"][part], "lengths": tensors["lengths"][part], "seeds": seeds}, path)
        code = _decode_code(model, path, out, ns, batch, go)
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True))
        ready.append(Path(str(out) + ".ready"))
    while not all(r.exists() for r in ready):
        time.sleep(0.05)  # all through their imports
    go.touch()
    runs = [_parse(proc.communicate()[0]) for proc in procs]
    return max(r[0] for r in runs), sum(r[2] for r in runs)


def grid_run(
    root: Path, model: Path, prompts: Path, ns: argparse.Namespace, shard: int
) -> tuple[float, dict[str, torch.Tensor], dict[str, Any]]:
    """(seconds from submit to the result downloaded, the result, where the time went)."""
    policy = VerificationSpec(mode=ns.verification)
    nodes = [f"node{i}" for i in range(ns.nodes)]
    with LocalGrid(root / "grid") as grid:
        grid.start_coordinator()
        for name in nodes:
            grid.start_node(name, "--device", "cpu", "--threads", str(ns.threads))
        grid.wait_for_nodes(ns.nodes)
        time.sleep(3)  # let the nodes settle, as running daemons would be (their workers are warm)
        cpu = GridCpu(grid)
        cpu.settle()  # the referee's child has imported torch: its start is not the job's
        with Client(grid.target, Signer.generate()) as client:
            cpu.start()
            start = time.monotonic()
            job = client.submit_generation(
                model,
                prompts,
                vocab_size=VOCAB,
                shard_prompts=shard,
                device="cpu",
                verification=policy,
                **settings(ns.max_new),  # type: ignore[arg-type]
            )
            submitted = time.monotonic()
            final = client.wait(job.job_id)
            done = time.monotonic()
            assert final.state.value == "succeeded", final.error
            client.result(job.job_id, root / "grid_out.safetensors")
            seconds = time.monotonic() - start
            spent = cpu.seconds()
        report = breakdown(grid, job.job_id, done - submitted, nodes)
        report.update(
            submit_s=round(submitted - start, 2),
            run_s=round(done - submitted, 2),
            download_s=round(start + seconds - done, 2),
            cpu_s=spent,
        )
    return seconds, load_tensors(root / "grid_out.safetensors"), report


def verification_cost(report: dict[str, Any], prompts: int, max_new: int) -> dict[str, Any]:
    """CPU seconds of checks (on nodes) and of the referee over the shards' CPU seconds (see the
    module's docstring), with each part per prompt and per token, from grid_run's report."""
    nodes = report["nodes"].values()
    shard_cpu = sum(n["cpu_s"] for n in nodes)
    check_cpu = sum(n["check_cpu_s"] for n in nodes)
    referee_cpu = report["cpu_s"]["referee"]

    def ms(seconds: float, count: int) -> float | None:
        return round(1000 * seconds / count, 3) if count else None

    checked, refereed = report["check_rows"], report["referee_rows"]
    return {
        "share": round((check_cpu + referee_cpu) / max(1e-9, shard_cpu), 4),
        "budget": 0.05,
        "checks_share": round(check_cpu / max(1e-9, shard_cpu), 4),
        "referee_share": round(referee_cpu / max(1e-9, shard_cpu), 4),
        "shard_cpu_s": round(shard_cpu, 2),
        "check_cpu_s": round(check_cpu, 2),
        "referee_cpu_s": round(referee_cpu, 2),  # the referee's program load included
        "checks": sum(n["checks"] for n in nodes),
        "check_prompts": checked,
        "referee_rulings": report["referee_rulings"],
        "referee_scored": report["referee_scored"],
        "referee_prompts": refereed,
        # CPU ms per prompt and per generated token: a shard's, a check's, the referee's
        "ms_per_prompt": {
            "shard": ms(shard_cpu, prompts),
            "check": ms(check_cpu, checked),
            "referee": ms(referee_cpu, refereed),
        },
        "ms_per_token": {
            "shard": ms(shard_cpu, prompts * max_new),
            "check": ms(check_cpu, checked * max_new),
            "referee": ms(referee_cpu, refereed * max_new),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="target in-process decoding time (CPU seconds)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, in-process and on each node")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--shards", type=int, default=4, help="tasks; few and large: a node batches a shard's prompts")
    p.add_argument("--max-new", type=int, default=32)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--verification", default="spotcheck", choices=("none", "spotcheck", "replicate"))
    p.add_argument("--keep", type=Path, default=None, help="work here and keep the grid's logs and database")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    with tempfile.TemporaryDirectory(prefix="tg-bench-gen-") as tmp:
        root = Path(tmp) if ns.keep is None else ns.keep
        root.mkdir(parents=True, exist_ok=True)
        model, prompts = root / "decoder.pt2", root / "prompts.safetensors"
        torch.manual_seed(0)
        export_decoder(TinyGPT(VOCAB, ns.width, ns.depth, 4, CONTEXT).eval(), model, CONTEXT)
        probe = 4 * MIN_SHARD
        write_prompts(prompts, probe)
        # sized by CPU seconds, not wall: a busy machine must not shrink the job (verification's
        # share has a fixed part, the referee's one program load, that a small job pays more for)
        probe_cpu_s = local_run(model, prompts, root / "probe.safetensors", ns, probe)[4]
        n = max(ns.shards * MIN_SHARD, int(ns.seconds / probe_cpu_s * probe) // ns.shards * ns.shards)
        shard = n // ns.shards
        write_prompts(prompts, n)
        loads = [os.getloadavg()[0]]
        local = local_run(model, prompts, root / "local.safetensors", ns, shard)
        local_s, local_decode_s, local_cpu_s, tokens, _ = local
        loads.append(os.getloadavg()[0])
        grid_s, got, report = grid_run(root, model, prompts, ns, shard)
        print(f"grid {grid_s:.1f}s: {report}", flush=True)
        loads.append(os.getloadavg()[0])
        split_s, split_cpu_s = split_run(model, prompts, root, ns, shard)
        loads.append(os.getloadavg()[0])
        want = load_tensors(root / "local.safetensors")
        same = torch.equal(got["tokens"], want["tokens"]) and torch.equal(got["lengths"], want["lengths"])
    local_rate, grid_rate = tokens / local_s, tokens / grid_s
    per_node = grid_rate / ns.nodes / local_rate
    nodes = report["nodes"].values()
    cpu = report["cpu_s"]
    verification = verification_cost(report, n, ns.max_new) if ns.verification != "none" else None
    print(
        f"{n} prompts, {tokens} tokens: in-process {local_s:.1f}s ({local_rate:.0f} tokens/s), grid with "
        f"{ns.nodes} nodes {grid_s:.1f}s ({grid_rate:.0f} tokens/s): {per_node:.2f}x per node; {ns.nodes} bare "
        f"processes at once {split_s:.1f}s ({split_s / grid_s:.2f}x the grid's speed); CPU {local_cpu_s:.1f}s "
        f"in process, {sum(cpu.values()):.1f}s on the grid ({cpu})"
    )
    if verification is not None:
        print(
            f"verification: {100 * verification['share']:.1f}% of the shards' CPU (checks "
            f"{100 * verification['checks_share']:.1f}%, referee {100 * verification['referee_share']:.1f}%); "
            f"CPU ms per token {verification['ms_per_token']}"
        )
    emit(
        {
            "benchmark": "generation",
            "prompts": n,
            "tokens": tokens,
            "nodes": ns.nodes,
            "shards": ns.shards,
            "prompts_per_forward": shard,  # a node decodes its shard as one batch; in process the same
            "threads_per_node": ns.threads,
            "threads_in_process": ns.threads,
            "cores": os.cpu_count(),
            "load_avg_1m": [round(x, 2) for x in loads],  # at the start, before and after the grid, at the end
            "verification": ns.verification,
            "local_s": round(local_s, 2),
            "grid_s": round(grid_s, 2),
            "local_tokens_per_s": round(local_rate, 1),
            "grid_tokens_per_s": round(grid_rate, 1),
            "per_node_ratio": round(per_node, 3),
            "goal_per_node_ratio": 0.9,
            "results_equal": same,
            # The grid against the same work on bare processes, one per node, started together:
            # on busy cores each of several processes gets less of the machine than one does, a
            # cost per_node_ratio charges to the grid; this one leaves it out (1.0: no grid cost).
            "split_s": round(split_s, 2),
            "split_cpu_s": round(split_cpu_s, 2),
            "grid_vs_split": round(split_s / grid_s, 3),
            # Load-independent: CPU seconds decoding in process over the grid's (workers, node
            # daemons, coordinator, client), and the workers' decoding seconds over in-process.
            "local_cpu_s": round(local_cpu_s, 2),
            "grid_cpu_s": round(sum(cpu.values()), 2),
            "cpu_ratio": round(local_cpu_s / max(1e-9, sum(cpu.values())), 3),
            "node_decode_slowdown": round(sum(x["compute_s"] for x in nodes) / local_decode_s, 3),
            # CPU of checks on nodes and of the referee over the shards' CPU (goal: <= 0.05)
            "verification_share": verification["share"] if verification else None,
            "verification_cost": verification,
            "breakdown": report,
        }
    )


if __name__ == "__main__":
    main()
