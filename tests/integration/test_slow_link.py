"""A node behind a slow link keeps its lease while it fetches a large program.

The node dials the coordinator through a proxy (tensorgrid.testing.netsim) that adds 50 ms each
way and caps the link at 2 MB/s, so the program's fetch takes seconds and fills the proxy's
queue toward the node: everything the coordinator sends down that connection, heartbeats'
answers included, waits behind the program's bytes. The node holds its lease all the while
(1.5 s TTL, beats every 0.3 s): a node that waited for each heartbeat's answer before sending
the next let the lease lapse during the fetch, and every large fetch over a slow link cost the
task an attempt and the node a failure (how the multi-host test's job once failed outright).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.testing.netsim import Link, ProxyThread
from tensorgrid.types import JobState
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.conftest import node_args

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLOW = Link(delay_s=0.05, rate_bytes_s=2_000_000)  # 16 Mbit/s, no resets: only the queue matters here
ROWS = 400


@pytest.fixture
def proxy_thread() -> Iterator[ProxyThread]:
    with ProxyThread() as thread:
        yield thread


def _large_program(root: Path) -> tuple[Path, Path]:
    """A 12 MB MLP (6 s over the link) and a few rows for it."""
    torch.manual_seed(0)
    width = 1024
    layers: list[torch.nn.Module] = [torch.nn.Linear(16, width), torch.nn.ReLU()]
    for _ in range(2):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 4)).eval()
    x = torch.randn(ROWS, 16)
    program, inputs = root / "large.pt2", root / "rows.safetensors"
    export_program(model, (x[:4],), program)
    save_tensors({"x": x}, inputs)
    return program, inputs


def test_a_node_on_a_slow_link_keeps_its_lease_while_it_fetches_a_large_program(
    make_grid: Callable[..., LocalGrid], proxy_thread: ProxyThread, tmp_path: Path
) -> None:
    program, inputs = _large_program(tmp_path)
    assert program.stat().st_size > 4 * SLOW.rate_bytes_s  # seconds of fetch, several lease TTLs
    grid = make_grid()
    grid.start_coordinator()
    port = int(grid.target.rsplit(":", 1)[1])
    proxy = proxy_thread.add("127.0.0.1", 0, "127.0.0.1", port, SLOW)
    grid.start_node("node1", *node_args(), coordinator=f"127.0.0.1:{proxy.port}")
    grid.wait_for_nodes(1, timeout=300)
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_inference(program, inputs, shard_rows=ROWS, batch_size=ROWS, device="cpu")
        final = client.wait(job.job_id)
    assert final.state == JobState.SUCCEEDED, final.error
    assert proxy.carried > program.stat().st_size  # the program did come through the link
    db = grid.root / "coordinator" / "coordinator.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        attempts = conn.execute(
            "SELECT attempt, failures FROM tasks WHERE job_id = ? AND kind = 'inference'", (job.job_id,)
        ).fetchall()
    assert attempts == [(1, 0)], f"the lease lapsed during the fetch: (attempt, failures) {attempts}"
