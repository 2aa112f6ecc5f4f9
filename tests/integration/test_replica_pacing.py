"""Two coordinator replicas on one PostgreSQL database pace idle heartbeats on the whole grid:
each tells its own nodes the interval of every node alive at either replica, not of its own
half (services.pacing), so two replicas make the idle heartbeats one would."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.types import Capabilities

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
PER_REPLICA = 4  # idle nodes on each replica
PACING = ("--heartbeat-ms", "1000", "--idle-heartbeats-per-s", "1", "--referee-start", "first-use")
WAIT_S = 30.0  # the replicas read the grid's count every 5 s
CPU = Capabilities(device_kind="cpu", memory_bytes=1 << 30, cpu_cores=1)


async def _paced(targets: list[str]) -> list[list[float]]:
    """PER_REPLICA idle nodes register at each replica, then all heartbeat every half second
    until each is told the whole grid's interval (or WAIT_S passed); the intervals each round told."""
    nodes = [NodeClient(target, Signer.generate()) for target in targets for _ in range(PER_REPLICA)]
    rounds: list[list[float]] = []
    try:
        for node in nodes:
            await node.register(CPU)
        total = len(nodes)
        for _ in range(int(WAIT_S / 0.5)):
            for node in nodes:
                await node.heartbeat([])
            rounds.append([node.idle_heartbeat_s for node in nodes])
            if rounds[-1] == [float(total)] * total:
                break
            await asyncio.sleep(0.5)
    finally:
        for node in nodes:
            await node.close()
    return rounds


@pytest.mark.timeout(180)
def test_each_replica_tells_its_idle_nodes_the_interval_of_the_whole_grid(tmp_path: Path, pg_url: str) -> None:
    with LocalGrid(tmp_path) as grid:
        grid.start_coordinator(*PACING, database_url=pg_url)
        grid.start_replica(pg_url)
        rounds = asyncio.run(_paced(grid.targets.split(",")))
    # alone, each replica would count its own four nodes: 4 s; the grid has eight, at 1 a second: 8 s
    total = 2 * PER_REPLICA
    assert rounds[-1] == [float(total)] * total, rounds[-1]
    assert all(max(r) <= total for r in rounds)  # never past it on the way there
