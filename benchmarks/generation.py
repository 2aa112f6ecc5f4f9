"""Generation throughput: tokens/s of a generation job on a fresh 2-node grid vs the same
decoding loop in-process, same run, same thread count per process. Goal: grid tokens/s per
node ≥ 0.9 × in-process tokens/s.

The decoder is a GPT-style transformer built here from torch.nn (tests/decoders.py), exported
as one full-sequence program. The grid's time runs from submit (uploads included) to the
result downloaded; nodes are started beforehand, as volunteers' daemons would be. The
in-process run happens in a fresh interpreter with torch imported, as a node's warm worker
is: both load the program. Verification is off by default (`--verification spotcheck` to
include the default policy: on new nodes it re-runs most of each small shard, see the report).

    python -m benchmarks.generation [--seconds 30] [--threads 1] [--nodes 2] [--shards 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import emit
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import VerificationSpec
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.decoders import TinyGPT, export_decoder

VOCAB, CONTEXT = 96, 128
PROMPT_LEN = (8, 32)
MIN_SHARD = 8  # prompts: a shard of 1-2 prompts pays the per-step overhead for too few rows


def settings(max_new: int) -> dict[str, object]:
    return {"max_new_tokens": max_new, "temperature": 0.8, "top_k": 40, "seed": 7}


def write_prompts(path: Path, n: int) -> None:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(PROMPT_LEN[0], PROMPT_LEN[1] + 1, (n,), generator=g)
    save_tensors({"tokens": torch.randint(0, VOCAB, (n, PROMPT_LEN[1]), generator=g), "lengths": lengths}, path)


def local_run(model: Path, prompts: Path, out: Path, threads: int, max_new: int) -> tuple[float, float, int]:
    """(seconds with the program's load, seconds decoding, tokens) of run_generation in a fresh
    interpreter with torch imported."""
    code = (
        "import time, torch\n"
        "from tensorgrid.workloads.generation import DecodeSettings, run_generation\n"
        f"torch.set_num_threads({threads})\n"
        f"s = DecodeSettings.from_dict({{'vocab_size': {VOCAB}, **{settings(max_new)!r}}})\n"
        "t = time.monotonic()\n"
        f"stats = run_generation({str(model)!r}, {str(prompts)!r}, {str(out)!r}, s, device='cpu')\n"
        "print(time.monotonic() - t, stats.seconds, stats.tokens)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, decoding, tokens = proc.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(decoding), int(tokens)


def grid_run(
    root: Path, model: Path, prompts: Path, ns: argparse.Namespace, shard: int
) -> tuple[float, dict[str, torch.Tensor]]:
    policy = VerificationSpec(mode=ns.verification)
    with LocalGrid(root / "grid") as grid:
        grid.start_coordinator()
        for i in range(ns.nodes):
            grid.start_node(f"node{i}", "--device", "cpu", "--threads", str(ns.threads))
        grid.wait_for_nodes(ns.nodes)
        time.sleep(3)  # let the nodes warm their workers, as running daemons would be
        with Client(grid.target, Signer.generate()) as client:
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
            final = client.wait(job.job_id)
            assert final.state.value == "succeeded", final.error
            client.result(job.job_id, root / "grid_out.safetensors")
            seconds = time.monotonic() - start
    return seconds, load_tensors(root / "grid_out.safetensors")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="target in-process decoding time")
    p.add_argument("--threads", type=int, default=1, help="torch threads, in-process and on each node")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--shards", type=int, default=4, help="tasks; few and large: a node batches a shard's prompts")
    p.add_argument("--max-new", type=int, default=32)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--verification", default="none", choices=("none", "spotcheck", "replicate"))
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    with tempfile.TemporaryDirectory(prefix="tg-bench-gen-") as tmp:
        root = Path(tmp)
        model, prompts = root / "decoder.pt2", root / "prompts.safetensors"
        torch.manual_seed(0)
        export_decoder(TinyGPT(VOCAB, ns.width, ns.depth, 4, CONTEXT).eval(), model, CONTEXT)
        probe = 16
        write_prompts(prompts, probe)
        _, probe_s, _ = local_run(model, prompts, root / "probe.safetensors", ns.threads, ns.max_new)
        n = max(ns.shards * MIN_SHARD, int(ns.seconds / probe_s * probe) // ns.shards * ns.shards)
        write_prompts(prompts, n)
        local_s, _, tokens = local_run(model, prompts, root / "local.safetensors", ns.threads, ns.max_new)
        grid_s, got = grid_run(root, model, prompts, ns, n // ns.shards)
        want = load_tensors(root / "local.safetensors")
        same = torch.equal(got["tokens"], want["tokens"]) and torch.equal(got["lengths"], want["lengths"])
    local_rate, grid_rate = tokens / local_s, tokens / grid_s
    per_node = grid_rate / ns.nodes / local_rate
    print(
        f"{n} prompts, {tokens} tokens: in-process {local_s:.1f}s ({local_rate:.0f} tokens/s), "
        f"grid with {ns.nodes} nodes {grid_s:.1f}s ({grid_rate:.0f} tokens/s): {per_node:.2f}x per node"
    )
    emit(
        {
            "benchmark": "generation",
            "prompts": n,
            "tokens": tokens,
            "nodes": ns.nodes,
            "shards": ns.shards,
            "threads": ns.threads,
            "verification": ns.verification,
            "local_s": round(local_s, 2),
            "grid_s": round(grid_s, 2),
            "local_tokens_per_s": round(local_rate, 1),
            "grid_tokens_per_s": round(grid_rate, 1),
            "per_node_ratio": round(per_node, 3),
            "goal_per_node_ratio": 0.9,
            "results_equal": same,
        }
    )


if __name__ == "__main__":
    main()
