"""Deleting an endpoint: the answers already given are paid from its escrow, written before
its job is cancelled, even when their receipt is still on its way (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch

from coordinator.repositories.store import Store
from coordinator.services.serving.accounting import Accounting
from coordinator.services.serving.router import Router
from coordinator.services.serving.service import Serving
from tensorgrid.serving import tensors_to_bytes
from tensorgrid.types import JobState
from tests.unit.coordinator.serving_sim import DOMAIN, SimNode, spec
from tests.unit.coordinator.test_serving_accounting import EP, PRICE, SUBMITTER, add_endpoint, credit_rows, runtime


@pytest.fixture
def state(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    yield st
    st.close()


def test_a_delete_waits_for_the_receipt_of_an_answer_given_and_pays_it(state: Store) -> None:
    add_endpoint(state)
    state.jobs.start_job(EP, 1)
    rt = runtime()
    router = Router(DOMAIN, Accounting(rt, state.engine))
    serving = Serving(rt, state, router)

    async def scenario() -> None:
        node = SimNode(router, receipt_tamper="skip")  # answers; its receipt comes later, by hand
        node.connect()
        ep = router.add_endpoint(EP, SUBMITTER, spec(), 0)
        for _ in range(5):
            await asyncio.sleep(0)
        output, _, _ = await router.infer(ep, tensors_to_bytes({"x": torch.ones(1, 4)}))
        (req,) = node.requests
        node.receipt_tamper = ""
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, node.send_receipt, req.replica_id, node.batch, [req.request_id], [req.input], [output])
        info = await serving.delete(EP, SUBMITTER)
        assert info.state == JobState.CANCELLED
        assert [r[3] for r in credit_rows(state)] == [PRICE]  # written by the delete's own flush

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_paid_endpoint_answers_only_once_its_escrow_lock_is_confirmed(
    state: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the lock is on chain the submitter could still close the escrow: no free answers."""
    from coordinator.services.serving import service
    from coordinator.services.serving.errors import Unavailable

    monkeypatch.setattr(service, "SECURED_POLL_S", 0.02)
    add_endpoint(state)
    rt = runtime()
    router = Router(DOMAIN, Accounting(rt, state.engine))
    lock_confirmed = asyncio.Event()
    serving = Serving(rt, state, router, withheld=lambda job_id: not lock_confirmed.is_set())
    data = tensors_to_bytes({"x": torch.ones(1, 4)})

    async def scenario() -> None:
        SimNode(router).connect()
        await serving.opened(state.jobs.get_job(EP))
        ep = router.endpoints[EP]
        for _ in range(5):
            await asyncio.sleep(0)
        assert ep.ready()
        with pytest.raises(Unavailable, match="escrow's lock is confirmed") as refused:
            await router.infer(ep, data)
        assert refused.value.retry_after_ms > 0
        lock_confirmed.set()
        for _ in range(100):
            if ep.secured:
                break
            await asyncio.sleep(0.02)
        output, _, _ = await router.infer(ep, data)
        assert output

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_an_endpoint_whose_escrow_lock_failed_is_not_served(state: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.services.serving import service

    monkeypatch.setattr(service, "SECURED_POLL_S", 0.02)
    add_endpoint(state)
    rt = runtime()
    router = Router(DOMAIN, Accounting(rt, state.engine))
    serving = Serving(rt, state, router, withheld=lambda job_id: True)  # the lock never lands

    async def scenario() -> None:
        await serving.opened(state.jobs.get_job(EP))
        ep = router.endpoints[EP]
        state.jobs.cancel_job(EP, SUBMITTER, 2)  # as the ledger ends a job whose lock failed
        for _ in range(100):
            if ep.state != "running":
                break
            await asyncio.sleep(0.02)
        assert ep.state == "deleted" and not ep.secured

    asyncio.run(asyncio.wait_for(scenario(), 20))
