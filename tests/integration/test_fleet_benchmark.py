"""The fleet benchmark at a tiny size, so it cannot rot: its simulated nodes (real keys, the real
node API, one connection each) register, heartbeat, lease and hand in no-op tasks against a real
coordinator on PostgreSQL, and the benchmark prints its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_twenty_simulated_nodes_register_and_finish_their_tasks(pg_server: str) -> None:
    args = [
        *("--sizes", "20", "--replica-nodes", "0", "--tasks", "100"),
        *("--lease-rate", "20", "--latency-s", "2", "--idle-s", "3", "--gc-sweep-s", "1", "--no-baseline"),
        *("--database-url", pg_server),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "benchmarks.fleet", *args]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    size = result["sizes"]["20"]
    assert size["nodes_registered"] == 20
    assert size["tasks_done"] >= 100  # the throughput job's tasks, and what the latency phase left
    assert size["tasks_per_s"] > 0 and size["lease"]["samples"] > 0
    assert size["rss_bytes_per_node"] > 0
    assert size["idle_gc_sweeps"] and all(s["objects"] > 0 for s in size["idle_gc_sweeps"])  # --gc-sweep-s 1
    assert size["errors"] == {} and size["lease_errors"] == {}
