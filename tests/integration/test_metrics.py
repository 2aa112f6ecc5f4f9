"""The coordinator's and a node's Prometheus endpoints over real processes: RPC counts and latencies,
blob bytes by path, tasks, jobs and live nodes from the database; a node's tasks, bytes, memory and
earnings; nothing that names a job, a blob or an address. And the daemons' JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.types import JobState
from tests.integration.conftest import BATCH, Assets, node_args
from tests.security.test_submitter_access import CPU, EMPTY

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def test_metrics_count_calls_bytes_tasks_and_nodes_and_name_no_one(
    make_grid: Callable[..., LocalGrid], tmp_path: Path
) -> None:
    port = _free_port()
    grid = make_grid("--metrics-listen", f"127.0.0.1:{port}")
    grid.start_coordinator()
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(4096))
    big.write_bytes(os.urandom(3 << 20))
    node_key = Signer.generate()
    with Client(grid.target, Signer.generate()) as client:
        refs = [client.upload(small), client.upload(big)]  # gRPC, then the bulk port
        job = client.submit_noop(2)

        async def work() -> None:
            node = NodeClient(grid.target, node_key)
            await node.register(CPU)
            done = 0
            while done < 2:
                leases, _ = await node.lease(2)
                for lease in leases:
                    ok, reason = await node.submit(node.sign(lease, EMPTY), 0, b"")
                    assert ok, reason
                    done += 1
            await node.close()

        asyncio.run(work())
        client.wait(job.job_id)
        with pytest.raises(CoordinatorError):
            client.job("0" * 64)  # NOT_FOUND, counted as such

        # a call is counted as its handler returns, which may be just after its caller has the reply
        not_found = ("tensorgrid_rpcs_total", (("code", "NOT_FOUND"), ("method", "GetJob")))
        deadline = time.monotonic() + 10
        while not_found not in (m := _scrape(port)[1]) and time.monotonic() < deadline:
            time.sleep(0.1)
        text, m = _scrape(port)
    assert m[("tensorgrid_jobs", (("state", "succeeded"),))] == 1
    assert sum(v for (name, _), v in m.items() if name == "tensorgrid_tasks") >= 2
    assert m[("tensorgrid_live_nodes", ())] == 1
    assert m[("tensorgrid_database_up", ())] == 1
    assert m[("tensorgrid_database_commits_total", ())] >= 2  # at least the job and its result
    assert m[("tensorgrid_blob_bytes_total", (("direction", "in"), ("path", "grpc")))] == 4096
    assert m[("tensorgrid_blob_bytes_total", (("direction", "in"), ("path", "bulk")))] == 3 << 20
    assert m[("tensorgrid_rpcs_total", (("code", "OK"), ("method", "SubmitJob")))] == 1
    get_job = {
        labels: v for (name, labels), v in m.items() if name == "tensorgrid_rpcs_total" and "GetJob" in str(labels)
    }
    assert get_job.get((("code", "NOT_FOUND"), ("method", "GetJob"))) == 1, get_job
    leased = m[("tensorgrid_rpc_seconds_count", (("method", "LeaseTasks"),))]
    assert leased >= 1 and m[("tensorgrid_rpc_seconds_sum", (("method", "LeaseTasks"),))] > 0
    assert m[("tensorgrid_event_loop_lag_seconds_count", ())] >= 1  # the loop's 50 ms probe ran
    # counts only: no job id, blob hash or address appears anywhere
    for secret in (job.job_id, refs[0].sha256, refs[1].sha256, node_key.address, client.signer.address):
        assert secret.lower() not in text.lower()


def test_node_metrics_count_its_work_and_json_logs_are_one_object_per_line(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    port = _free_port()
    grid = make_grid("--log-format", "json")
    coordinator = grid.start_coordinator()
    node = grid.start_node(  # --log-format comes before the command: its variable here
        "node0", *node_args(), "--metrics-listen", f"127.0.0.1:{port}", env={"TENSORGRID_NODE_LOG_FORMAT": "json"}
    )
    grid.wait_for_nodes(1)
    _, before = _scrape(port)
    with grid.client(Signer.generate()) as client:
        job = client.submit_inference(digits.model, digits.inputs, shard_rows=600, batch_size=BATCH, device="cpu")
        final = client.wait(job.job_id)
    assert final.state == JobState.SUCCEEDED, final.error
    text, m = _scrape(port)
    ok = sum(
        v for (name, labels), v in m.items() if name == "tensorgrid_node_tasks_total" and ("outcome", "ok") in labels
    )
    assert ok >= final.tasks_total >= 2  # its job's tasks, and any check it was given
    assert m[("tensorgrid_node_task_seconds_count", (("kind", "inference"),))] >= final.tasks_total
    assert m[("tensorgrid_node_results_total", (("answer", "accepted"),))] >= final.tasks_total
    downloaded = m[("tensorgrid_node_blob_bytes_total", (("direction", "downloaded"),))]
    assert downloaded >= digits.model.stat().st_size  # the model and the shards came over the wire
    assert m[("tensorgrid_node_blob_bytes_total", (("direction", "uploaded"),))] > 0
    assert m[("tensorgrid_node_resident_memory_bytes", ())] > 50 << 20  # the daemon and its warm worker
    assert (
        m[("tensorgrid_node_process_cpu_seconds_total", ())]
        >= before[("tensorgrid_node_process_cpu_seconds_total", ())]
    )
    assert m[("tensorgrid_node_worker_cpu_seconds", ())] > 0
    assert ("tensorgrid_node_earned_wei", ()) in m  # polled from the coordinator at start
    assert m[("tensorgrid_node_earnings_poll_failures_total", ())] == 0
    assert not any(name.startswith("tensorgrid_node_gpu") for name, _ in m)  # a CPU node
    for secret in (job.job_id, final.result.sha256 if final.result else job.job_id, client.signer.address):
        assert secret.lower() not in text.lower()
    grid.stop()
    for proc in (coordinator, node):
        lines = proc.log_path.read_text().splitlines()
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records), proc.name
    assert any(
        r["logger"] == "tensorgrid.coordinator" for r in map(json.loads, coordinator.log_path.read_text().splitlines())
    )
