"""The demo's on-chain part: wait for settlement, let the nodes claim, print the evidence."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from tensorgrid.chain.client import JobStatus
from tensorgrid.errors import TensorGridError
from tensorgrid.localgrid import PASSWORD
from tensorgrid.types import JobInfo

REWARD_WEI = 10**15  # 0.001 ETH per task
ETH = 10**18


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TensorGridError(f"timed out after {timeout:.0f}s waiting for {what}")


def show_settlement(cg: Any, client: Any, job: JobInfo) -> None:
    """Print the job's escrow and result hash as recorded on chain, then have every node claim."""
    print("5. settlement on chain")
    escrow = wait_for(
        "the result hash on chain", lambda: (e := client.escrow(job.job_id)).status == JobStatus.COMPLETED and e
    )
    assert job.result is not None
    print(f"   job record    status {escrow.status.name.lower()}, spec hash {escrow.spec_hash[:16]}…")
    print(
        f"   result hash   {escrow.result_hash[:16]}… on chain; the downloaded result hashes to "
        f"{job.result.sha256[:16]}… ({'match' if escrow.result_hash == job.result.sha256 else 'MISMATCH'})"
    )
    fee = job.verification.fee_paid_wei if job.verification is not None else 0
    checkers = f" and {fee / ETH:.4f} ETH of verification fee won by checkers" if fee else ""
    print(
        f"   escrow        budget {escrow.budget / ETH:.4f} ETH, charged {escrow.charged / ETH:.4f} ETH for "
        f"{job.tasks_total} tasks{checkers}, rest refunded to the submitter"
    )
    time.sleep(cg.deployment.challenge_window + 1)  # roots become claimable after the challenge window
    cg.anvil.rpc("evm_mine")  # anvil mines on demand: a fresh block carries the chain's new time
    for i in range(len(cg.node_keys)):
        keystore = cg.grid.root / f"node{i}" / "key.json"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "node.main",
                "--keystore",
                str(keystore),
                "claim",
                "--coordinator",
                cg.grid.target,
                *cg.chain_args,
                *(cg.grid.tls.client_args if cg.grid.tls is not None else ()),
            ],
            capture_output=True,
            text=True,
            env={"TENSORGRID_KEY_PASSWORD": PASSWORD, **os.environ},
            timeout=120,
        )
        line = (out.stdout.strip() or out.stderr.strip()).splitlines()[-1:]
        print(f"   node{i} claim   {line[0] if line else '(no output)'}")
