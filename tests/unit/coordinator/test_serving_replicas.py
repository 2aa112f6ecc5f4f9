"""Two coordinator replicas on one database serving one endpoint (SQLite and PostgreSQL): each
serves every live endpoint on the nodes whose streams reached it, learns of endpoints created
and deleted on the other (sync, or at once when called), counts the other's credits against the
budget, and pays only the receipts of batches it routed itself: a node attached to both cannot
be paid twice for one batch."""

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
from tensorgrid.v1 import serving_pb2
from tests.unit.coordinator.serving_sim import DOMAIN, SimNode, spec
from tests.unit.coordinator.test_serving_accounting import EP, PRICE, SUBMITTER, add_endpoint, credit_rows, runtime

DATA = tensors_to_bytes({"x": torch.ones(1, 4)})


@pytest.fixture
def state(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    yield st
    st.close()


KEY = b"k" * 32  # the coordinator's counted key: the same at every replica


def _replica(state: Store) -> Serving:
    rt = runtime()
    return Serving(rt, state, Router(DOMAIN, Accounting(rt, state.engine), counted_key=KEY))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_replica_serves_what_another_created_and_stops_what_another_deleted(state: Store) -> None:
    add_endpoint(state)
    a, b = _replica(state), _replica(state)

    async def scenario() -> None:
        await a.opened(state.jobs.get_job(EP))  # submitted through replica a
        node = SimNode(b.router)  # the node's stream reached replica b
        node.connect()
        assert EP not in b.router.endpoints
        assert not await b.discover("00" * 32)  # a call naming an unknown id opens nothing
        await b.sync()
        await _settle()
        assert node.assigned and b.router.endpoints[EP].ready()
        output, answered_by, _ = await b.router.infer(b.router.endpoints[EP], DATA)
        assert output and answered_by == node.signer.address
        await a.delete(EP, SUBMITTER)  # deleted through replica a
        assert state.jobs.get_job(EP).state == JobState.CANCELLED
        await b.sync()
        await _settle()
        assert b.router.endpoints[EP].state == "deleted" and node.released == node.assigned
        await b.router.accounting.flush()
        assert [r[3] for r in credit_rows(state)] == [PRICE]  # b's answer, paid by b, once

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_the_budget_counts_what_the_other_replica_credited(state: Store) -> None:
    add_endpoint(state, max_requests=3)
    a, b = _replica(state), _replica(state)

    async def scenario() -> None:
        await a.opened(state.jobs.get_job(EP))
        assert await b.discover(EP)  # a call reached b before its sync did
        assert b.router.accounting.remaining(EP) == 3
        SimNode(a.router).connect()
        await _settle()
        for _ in range(2):
            await a.router.infer(a.router.endpoints[EP], DATA)
        await _settle()
        await a.router.accounting.flush()
        assert b.router.accounting.remaining(EP) == 3  # b's view before it looks again
        await b.sync()
        assert b.router.accounting.remaining(EP) == 1

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_node_attached_to_both_replicas_is_paid_once_per_batch(state: Store) -> None:
    """A receipt a replica verified is paid by it; the same receipt handed to the other replica
    names a replica id that one never assigned: refused, a protocol violation, not paid."""
    add_endpoint(state)
    a, b = _replica(state), _replica(state)

    async def scenario() -> None:
        await a.opened(state.jobs.get_job(EP))
        await b.sync()
        on_a, on_b = SimNode(a.router), SimNode(b.router)
        on_b.signer = on_a.signer  # one node, two Serve streams with one key
        on_a.connect()
        on_b.connect()
        await _settle()
        output, _, _ = await a.router.infer(a.router.endpoints[EP], DATA)
        await _settle()
        (req,) = on_a.requests
        on_b.endpoint_of.update(on_a.endpoint_of)
        assert on_b.link is not None
        on_b.send_receipt(req.replica_id, on_a.batch, [req.request_id], [req.input], [output])  # to b as well
        await _settle()
        assert on_b.link.violations == 1
        await a.router.accounting.flush()
        await b.router.accounting.flush()
        assert [r[3] for r in credit_rows(state)] == [PRICE]

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_node_that_kept_an_endpoint_warm_gets_its_replica_first() -> None:
    """Its coordinator replica died: the node comes with the endpoint still loaded. Placed on it
    before a cold node, even when a cold node reached the replica first (the extra is trimmed)."""

    async def scenario() -> None:
        router = Router(DOMAIN)
        ep = router.add_endpoint(EP, SUBMITTER, spec(min_replicas=1, max_replicas=1), 0)
        cold = SimNode(router, ready=False)  # still loading when the warm node arrives
        cold.connect()
        warm = SimNode(router)
        warm.connect(warm=(EP, "00" * 32))  # an endpoint this replica does not serve is ignored
        await _settle()
        assert cold.assigned and warm.assigned and [r.node for r in ep.ready()] == [warm.signer.address]
        router.tick()  # two live replicas, at most one: the one still loading goes
        await _settle()
        assert cold.released == cold.assigned and [r.node for r in ep.replicas.values()] == [warm.signer.address]
        late = SimNode(router)
        late.connect(warm=(EP,))  # one ready already: nothing more placed
        await _settle()
        assert not late.assigned

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_an_endpoint_submitted_while_sync_reads_is_not_ended_by_it(state: Store) -> None:
    """The read did not see a job created after it began: that is no sign it ended."""
    add_endpoint(state)
    a = _replica(state)
    read = state.jobs.live_jobs_of_kind

    def racing(kind: str) -> list[object]:
        seen = read(kind)
        a.router.add_endpoint(EP, SUBMITTER, spec(), 0)  # opened by a submit meanwhile
        return [j for j in seen if j.job_id != EP]

    async def scenario() -> None:
        state.jobs.live_jobs_of_kind = racing  # type: ignore[method-assign]
        await a.sync()
        assert a.router.endpoints[EP].state == "running"
        state.jobs.live_jobs_of_kind = read  # type: ignore[method-assign]
        state.jobs.cancel_job(EP, SUBMITTER, 2)
        await a.sync()  # now it was served before the read, and the read says it ended
        assert a.router.endpoints[EP].state == "deleted"

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_what_a_dead_replica_counted_and_never_wrote_is_paid_by_the_other_once(state: Store) -> None:
    """Replica a verified and counted a batch, told the node so (BatchCounted), and died before
    its flush. The node hands it to replica b with its next hello: paid once, however often it is
    handed in; a tag the node made itself, or another node's batch, pays nothing."""
    add_endpoint(state)
    a, b = _replica(state), _replica(state)

    async def scenario() -> None:
        await a.opened(state.jobs.get_job(EP))
        await b.sync()
        node = SimNode(a.router)
        node.connect()
        await _settle()
        await a.router.infer(a.router.endpoints[EP], DATA)
        await _settle()
        (told,) = node.counted  # a counted it; a dies now, its pending credit with it
        assert told.answered == 1 and told.endpoint_id == EP
        node.disconnect()
        forged = serving_pb2.BatchCounted(endpoint_id=EP, task_id="77" * 32, answered=5, tag=b"x" * 32)
        node.router = b.router
        link = node.connect(counted=(told, told, forged))
        await b.router.accounting.flush()
        assert link.violations == 1
        other = SimNode(b.router)
        assert other.connect(counted=(told,)).violations == 1  # another node's batch: its tag names the first
        node.disconnect()
        node.connect(counted=(told,))  # handed in again: already written
        await b.router.accounting.flush()
        assert [r[3] for r in credit_rows(state)] == [PRICE]

    asyncio.run(asyncio.wait_for(scenario(), 20))
