"""Small results in memory: never more than announced per call, never more than the budget over
all calls (beyond it they stream to disk and are accepted all the same)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig, PeerLimits
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.errors import BlobError
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.types import Capabilities, Receipt

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
SUBMITTER = "0x" + "11" * 20
OUTPUT = b"a small output"


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p


def grid(tmp_path: Path, budget: int) -> tuple[Coordinator, Signer, str]:
    app = Coordinator(
        CoordinatorConfig(
            data_dir=tmp_path / "coord",
            database_url=f"sqlite:///{tmp_path / 'state.db'}",
            peers=PeerLimits(result_memory_bytes=budget),
        )
    )
    node = Signer.generate()
    app.store.nodes.register_node(node.address, CPU, "00" * 32, app.runtime.now_ms(), 10**9, "n0")
    raw = canonical_json(NoopSpec(tasks=2))
    sh = spec_hash(raw)
    job, tasks = app.intake.plan(raw, SUBMITTER, sh, job_id_for(SUBMITTER, sh))
    app.store.jobs.create_job(job, tasks, app.runtime.now_ms())
    return app, node, job.job_id


@pytest.mark.parametrize("budget", [0, 1 << 20])
@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "one-message"])
def test_small_results_are_bounded_and_spill_to_disk_over_the_budget(tmp_path: Path, budget: int, whole: bool) -> None:
    # streamed in pieces (SubmitResult) or handed over at once (SubmitSmallResult): the same limits,
    # in memory or on disk
    app, node, job_id = grid(tmp_path, budget)
    sha = hashlib.sha256(OUTPUT).hexdigest()
    # announced as 14 bytes, sends more: refused at the first piece past 14
    too_long = OUTPUT + b"x" if whole else chunks(OUTPUT, b"x" * (4 << 20))
    exact = OUTPUT if whole else chunks(OUTPUT[:5], OUTPUT[5:])

    async def scenario() -> None:
        (first, second), _ = await app.scheduler.lease(node.address, 2, 0)
        receipt = sign_receipt(node, app.domain, Receipt(job_id, first.task_id, 1, first.input.sha256, sha))
        with pytest.raises(BlobError, match="more .*than the 14"):
            await app.acceptance.submit(node.address, receipt, len(OUTPUT), too_long)
        assert app.acceptance.memory.used == 0
        receipt = sign_receipt(node, app.domain, Receipt(job_id, second.task_id, 1, second.input.sha256, sha))
        done = await app.acceptance.submit(node.address, receipt, len(OUTPUT), exact)
        assert done.job_id == job_id and app.acceptance.memory.used == 0
        assert app.blobs.path_for(sha).read_bytes() == OUTPUT  # in memory or through the disk, the same blob

    try:
        asyncio.run(scenario())
    finally:
        app.store.close()
