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
