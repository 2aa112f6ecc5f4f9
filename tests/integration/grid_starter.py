"""A program that starts what the tests start (a local grid's coordinator and node, anvil) with
the tests' own helpers, prints their process ids and those of their children (and anvil's directory) as one JSON line,
then waits to be killed: tests/integration/test_orphans.py kills it and looks for survivors.

    python -m tests.integration.grid_starter ROOT
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tensorgrid.chain.anvil import start_anvil
from tensorgrid.localgrid import LocalGrid
from tests.procs import REFEREE_ENTRY, children

CHILDREN_WAIT_S = 20.0  # for the referee and the node's worker to start (forked by a warm zygote)


def main(root: Path) -> None:
    anvil = start_anvil(accounts=1)
    grid = LocalGrid(root, coordinator_args=["--referee-start", "boot"])
    coordinator = grid.start_coordinator()
    node = grid.start_node("node0", "--device", "cpu", "--threads", "1")
    deadline = time.monotonic() + CHILDREN_WAIT_S
    referees: list[int] = []
    while time.monotonic() < deadline:
        referees = [p for p, argv in children(coordinator.popen.pid).items() if any(REFEREE_ENTRY in a for a in argv)]
        if referees and children(node.popen.pid):
            break
        time.sleep(0.1)
    found = {
        "coordinator": [coordinator.popen.pid],
        "referee": referees,
        "node": [node.popen.pid],
        "node children": sorted(children(node.popen.pid)),
        "anvil": [anvil.process.pid, *children(anvil.process.pid)],  # its launcher, and anvil
    }
    # anvil's temporary directory is its starter's to remove (at exit): a killed one leaves it
    print(json.dumps({"pids": found, "anvil_dir": str(anvil.workdir)}), flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
