"""The coordinator's Prometheus endpoint over a real process: RPC counts and latencies, blob
bytes by path, tasks, jobs and live nodes from the database, and nothing that names a job,
a blob or an address."""

from __future__ import annotations

import asyncio
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
    # counts only: no job id, blob hash or address appears anywhere
    for secret in (job.job_id, refs[0].sha256, refs[1].sha256, node_key.address, client.signer.address):
        assert secret.lower() not in text.lower()
