"""A client nobody here wrote: tests/js/client.mjs (Node.js, @grpc/grpc-js, ethers v6), written from
docs/API.md alone, drives a real coordinator and node over TLS the way a third party would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tensorgrid.localgrid import LocalGrid
from tests.integration.conftest import Assets, node_args
from tests.integration.test_inference import assert_matches_local

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "tests" / "js"


def run_js_client(grid: LocalGrid, assets: Assets, out: Path) -> dict[str, object]:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for this test (deploy/bootstrap.sh expects node and npm)"
    assert (JS / "node_modules" / "ethers").is_dir(), "tests/js/node_modules is missing: run deploy/bootstrap.sh"
    env = {
        **os.environ,
        "TG_TARGET": grid.target,
        "TG_CA": str(grid.ca_cert or ""),
        "TG_PROTO": str(ROOT / "proto"),
        "TG_MODEL": str(assets.model),
        "TG_INPUTS": str(assets.inputs),
        "TG_OUT": str(out),
    }
    done = subprocess.run([node, str(JS / "client.mjs")], cwd=JS, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the JS client failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_a_nodejs_client_built_from_the_docs(
    make_grid: Callable[..., LocalGrid], digits: Assets, tmp_path: Path
) -> None:
    grid = make_grid(tls=True)
    grid.start_coordinator()
    grid.start_node("n1", *node_args())
    out = tmp_path / "result.safetensors"
    report = run_js_client(grid, digits, out)

    assert report["no_session"] == "UNAUTHENTICATED"
    assert report["blob_roundtrip"] is True and report["bulk_roundtrip"] is True
    # the job id formula and ValidateJob's count, as the doc gives them
    assert report["validate"] == {"job_id_matches": True, "paid_tasks": 2, "exists": False}
    events = report["noop_events"]
    assert isinstance(events, list) and events[0] == "submitted" and events[-1] == "succeeded"
    assert events.count("completed") == 2
    assert report["noop"] == {
        "state": "JOB_STATE_SUCCEEDED",
        "tasks_done": 2,
        "spec_kept": True,  # the wei string travelled as written
        "result_is_empty_hashes": True,
    }
    # the escrow rule with its verification fee, computed in JavaScript from the doc, agrees
    escrow = report["escrow_rule"]
    assert isinstance(escrow, dict) and escrow["paid_tasks"] == escrow["computed"] == 3 + 1
    assert report["inference"] == {"state": "JOB_STATE_SUCCEEDED", "last_event": "succeeded", "shards": 3}
    assert_matches_local(out, digits)  # what it downloaded is the model's output, row for row
    assert report["cancelled"] == report["cancel_again"] == "JOB_STATE_CANCELLED"
    assert report["cancel_finished"] == "FAILED_PRECONDITION"
    assert report["codes"] == {
        "earnings_malformed": "INVALID_ARGUMENT",
        "earnings_fresh": "0",
        "unknown_job": "NOT_FOUND",
        "download_past_end": "INVALID_ARGUMENT",
        "bad_cancel_signature": "PERMISSION_DENIED",
        "no_epoch": "NOT_FOUND",
    }
