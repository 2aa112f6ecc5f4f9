"""The SubmitResult pipeline as a service, called the way the servicer calls it (no gRPC): a signed,
hash-checked result is accepted and its job assembled; a forged one is refused and counted."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.errors import Forged
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.types import Capabilities, JobState, Lease, Receipt

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
SUBMITTER = "0x" + "11" * 20
OUTPUT = b"done"


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def signed(app: Coordinator, signer: Signer, lease: Lease) -> Receipt:
    receipt = Receipt(
        lease.job_id, lease.task_id, lease.attempt, lease.input.sha256, hashlib.sha256(OUTPUT).hexdigest()
    )
    return sign_receipt(signer, app.domain, receipt)


def test_results_are_accepted_assembled_or_refused(db_url: str, tmp_path: Path) -> None:
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    node, stranger = Signer.generate(), Signer.generate()
    for i, who in enumerate((node, stranger)):
        app.store.nodes.register_node(who.address, CPU, f"{i:064x}", app.runtime.now_ms(), 10**9, f"n{i}")
    raw = canonical_json(NoopSpec(tasks=2))
    sh = spec_hash(raw)
    job_id = job_id_for(SUBMITTER, sh)
    job, tasks = app.intake.plan(raw, SUBMITTER, sh, job_id)
    app.store.jobs.create_job(job, tasks, app.runtime.now_ms())

    async def scenario() -> None:
        leases, _ = await app.scheduler.lease(node.address, 2, 0)
        assert len(leases) == 2
        forged = sign_receipt(stranger, app.domain, signed(app, node, leases[0]))
        with pytest.raises(Forged, match="signature"):
            await app.acceptance.submit(node.address, forged, len(OUTPUT), body(OUTPUT))
        assert app.store.nodes.get_node(node.address).rejections == 1  # type: ignore[union-attr]
        first = await app.acceptance.submit(node.address, signed(app, node, leases[1]), len(OUTPUT), body(OUTPUT))
        assert (first.job_id, first.complete) == (job_id, False)
        # The refused result's task is pending again, kept from its sender for a while.
        (again,), _ = await app.scheduler.lease(stranger.address, 1, 0)
        assert again.task_id == leases[0].task_id
        last = await app.acceptance.submit(stranger.address, signed(app, stranger, again), len(OUTPUT), body(OUTPUT))
        assert (last.job_id, last.complete) == (job_id, True)
        for _ in range(250):  # the job is assembled in the background
            if app.store.jobs.get_job(job_id).state.finished:
                break
            await asyncio.sleep(0.02)
        done = app.store.jobs.get_job(job_id)
        await app.stop()
        assert done.state == JobState.SUCCEEDED and done.result is not None, done.error

    asyncio.run(scenario())
