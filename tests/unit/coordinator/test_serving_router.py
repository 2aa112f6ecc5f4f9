"""The router in memory: routing, saturation, failover, receipts, scaling and placement."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

from coordinator.errors import Conflict
from coordinator.services.serving import placement, riders
from coordinator.services.serving.errors import DeadlineExceeded, RequestFailed, Saturated, StreamMismatch, Unavailable
from coordinator.services.serving.hooks import ServedBatch
from coordinator.services.serving.model import DRAINING, READY, Endpoint, NodeLink
from coordinator.services.serving.router import Router
from tensorgrid import serde
from tensorgrid.errors import InvalidTensorFile
from tensorgrid.serving import tensors_to_bytes
from tensorgrid.spec import EndpointSpec
from tensorgrid.types import ErrorKind, TaskError
from tensorgrid.v1 import serving_pb2
from tests.unit.coordinator.serving_sim import DOMAIN, Recorder, SimNode, spec

EP = "cd" * 32
ALICE = "0x" + "aa" * 20


def payload(i: int = 0, rows: int = 1) -> bytes:
    return tensors_to_bytes({"x": torch.full((rows, 4), float(i))})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 20))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def router(accounting: Recorder | None = None, clock: Clock | None = None) -> Router:
    return Router(DOMAIN, accounting or Recorder(), clock=clock or Clock())


def test_a_call_goes_to_the_ready_replica_with_fewest_in_flight() -> None:
    async def scenario() -> None:
        r = router()
        a, b = SimNode(r, answer=False), SimNode(r, answer=False)
        a.connect(), b.connect()
        ep = r.add_endpoint(EP, ALICE, spec(min_replicas=2, max_queue=4), 0)
        await settle()
        assert len(ep.ready()) == 2 and {x.node for x in ep.ready()} == {a.signer.address, b.signer.address}
        first = asyncio.create_task(r.infer(ep, payload(1)))
        await settle()
        second = asyncio.create_task(r.infer(ep, payload(2)))
        await settle()
        assert len(a.requests) == 1 and len(b.requests) == 1  # the second went to the idle replica
        first.cancel(), second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)

    run(scenario)


def test_every_replica_full_is_refused_with_a_retry_hint_and_none_ready_is_unavailable() -> None:
    async def scenario() -> None:
        r = router()
        warming = SimNode(r, ready=False)
        warming.connect()
        ep = r.add_endpoint(EP, ALICE, spec(max_queue=1), 0)
        await settle()
        with pytest.raises(Unavailable, match="1 warming"):
            await r.infer(ep, payload())
        warming.disconnect()
        node = SimNode(r, answer=False)
        node.connect()
        await settle()
        held = asyncio.create_task(r.infer(ep, payload()))
        await settle()
        with pytest.raises(Saturated) as refused:
            await r.infer(ep, payload())
        assert refused.value.retry_after_ms > 0
        assert ep.stats.refused == 1
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)

    run(scenario)


def test_a_call_fails_over_when_its_replica_goes_away() -> None:
    async def scenario() -> None:
        r = router()
        stalled, honest = SimNode(r, answer=False), SimNode(r)
        stalled.connect()
        ep = r.add_endpoint(EP, ALICE, spec(min_replicas=1), 0)
        await settle()
        call = asyncio.create_task(r.infer(ep, payload(7)))
        await settle()
        assert len(stalled.requests) == 1
        honest.connect()
        stalled.disconnect()  # its replica goes: the call moves to the replica placed on `honest`
        output, node, attempts = await call
        assert node == honest.signer.address and attempts == 2 and output.startswith(b"out:")

    run(scenario)


def test_a_call_whose_deadline_passes_is_deadline_exceeded_and_cancelled_on_the_node() -> None:
    async def scenario() -> None:
        r = router()
        node = SimNode(r, answer=False)
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()
        with pytest.raises(DeadlineExceeded):
            await r.infer(ep, payload(), timeout_ms=50)
        assert node.link is not None and not node.link.calls

    run(scenario)


@pytest.mark.parametrize("tamper", ["", "digest", "signature", "skip"])
def test_only_a_receipt_matching_what_was_sent_and_answered_is_paid(tamper: str) -> None:
    async def scenario() -> None:
        paid = Recorder()
        r = router(paid)
        node = SimNode(r, receipt_tamper=tamper)
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()
        output, _, _ = await r.infer(ep, payload(3))
        await settle()
        assert output.startswith(b"out:")  # the caller has its answer either way
        if tamper == "":
            assert len(paid.batches) == 1 and paid.batches[0].answered == 1
            assert paid.batches[0].requests[0].input == payload(3)
        else:
            assert paid.batches == []
            assert r.mismatches == (0 if tamper == "skip" else 1)

    run(scenario)


def test_a_caller_has_its_answer_before_the_receipt_riding_with_it_is_checked() -> None:
    """A node's receipt rides with its next replies: checking it (hashes, ecrecover) waits
    until the callers those replies answer have run, so it never delays an answer."""

    async def scenario() -> list[str]:
        order: list[str] = []

        class Paid(Recorder):
            def record(self, batch: ServedBatch) -> None:
                order.append(f"paid {batch.batch}")
                super().record(batch)

        r = router(Paid())
        node = SimNode(r, answer=False)
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()

        async def call(i: int) -> None:
            await r.infer(ep, payload(i))
            order.append(f"answered {i}")

        first = asyncio.ensure_future(call(1))
        await settle()
        req1 = node.requests[0]
        node.up(replies=[serving_pb2.ServeReply(request_id=req1.request_id, output=b"a", done=True, batch=1)])
        await first
        second = asyncio.ensure_future(call(2))
        await settle()
        req2 = node.requests[1]
        receipt1 = node.receipt(req1.replica_id, 1, [req1.request_id], [req1.input], [b"a"])
        reply2 = serving_pb2.ServeReply(request_id=req2.request_id, output=b"b", done=True, batch=2)
        node.up(replies=[reply2], receipts=[receipt1])  # as a node sends them: one message
        await second
        await settle()
        return order

    assert run(scenario) == ["answered 1", "answered 2", "paid 1"]


def test_unreceipted_answers_expire_unpaid() -> None:
    async def scenario() -> None:
        clock = Clock()
        r = router(clock=clock)
        node = SimNode(r, receipt_tamper="skip")
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()
        await r.infer(ep, payload())
        clock.t += 10
        r.tick()
        assert r.unpaid == 1
        replica = ep.ready()[0]
        assert not replica.answered

    run(scenario)


def test_a_reply_for_a_request_never_sent_is_ignored_and_counted() -> None:
    async def scenario() -> None:
        paid = Recorder()
        r = router(paid)
        node = SimNode(r)
        link = node.connect()
        r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()
        from tensorgrid.v1 import serving_pb2

        node.up(replies=[serving_pb2.ServeReply(request_id=999, output=b"forged", done=True, batch=1)])
        assert link.violations == 1 and link.closed and node.signer.address not in r.links
        assert paid.batches == []

    run(scenario)


def test_budget_spent_and_oversize_requests_are_refused_before_routing() -> None:
    async def scenario() -> None:
        r = router(Recorder(remaining=0))
        node = SimNode(r)
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(max_request_bytes=256), 0)
        await settle()
        with pytest.raises(Conflict, match="budget spent"):
            await r.infer(ep, payload())
        assert ep.state == "spent" and not node.released
        r.tick()  # a spent endpoint gives its idle replicas back: its nodes can do other work
        await settle()
        assert len(node.released) == 1 and not ep.replicas
        r.end_endpoint(EP, "deleted")
        await settle()
        assert ep.state == "deleted" and len(node.released) == 1
        r2 = router()
        SimNode(r2).connect()
        ep2 = r2.add_endpoint(EP, ALICE, spec(max_request_bytes=256), 0)
        await settle()
        with pytest.raises(InvalidTensorFile, match="over the limit"):
            await r2.infer(ep2, payload(rows=64))
        with pytest.raises(InvalidTensorFile):
            await r2.infer(ep2, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")

    run(scenario)


def test_requests_past_what_the_budget_can_pay_are_refused_not_answered_unpaid() -> None:
    """Budget for 2 more requests: 2 go in flight, the third is refused with a retry hint (the
    two may still fail and free their share), and no node answers what nobody would pay."""

    async def scenario() -> None:
        r = router(Recorder(remaining=2))
        node = SimNode(r, answer=False)
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(max_queue=8), 0)
        await settle()
        held = [asyncio.create_task(r.infer(ep, payload(i))) for i in range(2)]
        await settle()
        with pytest.raises(Saturated, match="budget for 2 more requests") as refused:
            await r.infer(ep, payload(3))
        assert refused.value.retry_after_ms > 0 and len(node.requests) == 2 and ep.state == "running"
        for call in held:
            call.cancel()
        await asyncio.gather(*held, return_exceptions=True)

    run(scenario)


def test_a_replica_busy_when_the_budget_runs_out_is_released_once_idle() -> None:
    async def scenario() -> None:
        paid = Recorder(remaining=1)
        r = router(paid)
        node = SimNode(r, answer=False)
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()
        call = asyncio.create_task(r.infer(ep, payload(1)))
        await settle()
        paid.left = 0  # that call's share is the last the budget pays
        r.tick()
        await settle()
        assert ep.state == "spent" and not node.released  # its call is still in flight
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await settle()
        r.tick()
        await settle()
        assert len(node.released) == 1 and not ep.replicas

    run(scenario)


def test_scaling_up_under_sustained_load_and_down_after_quiet() -> None:
    async def scenario() -> None:
        clock = Clock()
        r = router(clock=clock)
        a, b = SimNode(r, answer=False), SimNode(r)
        a.connect()
        ep = r.add_endpoint(EP, ALICE, spec(min_replicas=1, max_replicas=2, max_batch=1, max_queue=8), 0)
        b.connect(max_replicas=1)
        await settle()
        assert ep.live() == 1
        calls = [asyncio.create_task(r.infer(ep, payload(i))) for i in range(3)]
        await settle()
        r.tick()
        assert ep.live() == 1  # not yet: load must stay high ~2 s
        clock.t += 2.5
        r.tick()
        assert ep.live() == 2
        await settle()
        for c in calls:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        r.tick()
        clock.t += 31
        r.tick()
        assert ep.live() == 1 and (len(ep.replicas) == 1 or any(x.state == DRAINING for x in ep.replicas.values()))

    run(scenario)


def _link(node: str, device: str = "cpu", slots: int = 2, memory: int = 8 << 30) -> NodeLink:
    return NodeLink(node, device, memory, slots)


def test_placement_prefers_nodes_without_a_replica_and_respects_device_memory_and_bars() -> None:
    async def scenario() -> None:
        ep = Endpoint(EP, ALICE, spec(device="cuda", min_memory_bytes=4 << 30), 0)
        cpu, small, gpu1, gpu2 = (
            _link("c"),
            _link("s", "cuda", memory=1 << 30),
            _link("g1", "cuda"),
            _link("g2", "cuda"),
        )
        assert placement.choose_node([cpu, small], ep, 0) is None
        first = placement.choose_node([cpu, small, gpu1, gpu2], ep, 0)
        assert first is gpu1
        from coordinator.services.serving.model import Replica

        ep.replicas["r1"] = gpu1.replicas["r1"] = Replica("r1", ep, gpu1, state=READY)
        assert placement.choose_node([gpu1, gpu2], ep, 0) is gpu2
        ep.barred.add("g2")
        assert placement.choose_node([gpu1, gpu2], ep, 0) is gpu1  # a second replica on the same node, if only it
        ep.failed_at["g1"] = 0.0
        assert placement.choose_node([gpu1, gpu2], ep, 10.0) is None
        assert placement.choose_node([gpu1], ep, 10.0 + placement.FAILED_BACKOFF_S) is gpu1

    run(scenario)


def test_caught_node_is_barred_and_its_replica_replaced() -> None:
    async def scenario() -> None:
        paid = Recorder()
        r = router(paid)
        bad, good = SimNode(r), SimNode(r)
        bad.connect()
        ep = r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()
        await r.infer(ep, payload())
        await settle()
        good.connect()
        r.on_caught(paid.batches[0], "wrong answer")
        await settle()
        assert bad.signer.address in ep.barred and bad.released
        assert [x.node for x in ep.ready()] == [good.signer.address]
        rerun = await r.rerun(EP, payload(), 0, good.signer.address)
        assert rerun is None  # the only ready replica is on the excluded node
        rerun = await r.rerun(EP, payload(5), 0, bad.signer.address)
        assert rerun is not None and rerun.node == good.signer.address

    run(scenario)


class Drawn:
    """Checks that remember every batch the router hands them."""

    def __init__(self) -> None:
        self.batches: list[ServedBatch] = []

    def after_batch(self, batch: ServedBatch, spec: EndpointSpec) -> None:
        self.batches.append(batch)

    def counts(self, endpoint_id: str) -> tuple[int, int]:
        return (0, 0)


def test_a_rerun_hands_back_its_receipted_batch_marked_unpaid_and_not_to_be_drawn() -> None:
    async def scenario() -> None:
        paid, drawn = Recorder(), Drawn()
        r = Router(DOMAIN, paid, drawn, clock=Clock())
        subject, checker = SimNode(r), SimNode(r)
        subject.connect(), checker.connect()
        ep = r.add_endpoint(EP, ALICE, spec(min_replicas=2), 0)
        await settle()
        reran = await r.rerun(EP, payload(7), 0, subject.signer.address)
        assert reran is not None and reran.node == checker.signer.address and reran.receipted is not None
        theirs = await asyncio.wait_for(reran.receipted, 1)
        assert theirs is not None and theirs.node == checker.signer.address
        (request,) = theirs.requests
        assert request.rerun and request.request_id == reran.request_id and request.output == reran.output
        assert theirs.answered == 0 and drawn.batches == [theirs] and paid.batches == [theirs]
        assert theirs.receipt.signature and not r.reruns
        await r.infer(ep, payload(8))  # an ordinary request on the same replica: paid and drawn
        await settle()
        assert [b.answered for b in paid.batches] == [0, 1] and not drawn.batches[1].requests[0].rerun

    run(scenario)


def test_a_checks_rerun_rides_down_with_the_next_request_and_in_its_micro_batch() -> None:
    """A rerun sent alone woke the checking node and its worker once more while the next
    request was in flight (at 1 client, most of the slowest 1%): it is held for the checking
    replica's next request, which the router sends there when the replicas are equally busy."""

    async def scenario() -> None:
        r = router()
        subject, checker = SimNode(r, answer=False), SimNode(r, answer=False)
        subject.connect(), checker.connect()
        ep = r.add_endpoint(EP, ALICE, spec(min_replicas=2), 0)
        await settle()
        rerun = asyncio.create_task(r.rerun(EP, payload(7), 0, subject.signer.address))
        await settle()
        assert checker.downs == [] and subject.downs == []  # held, not sent alone
        call = asyncio.create_task(r.infer(ep, payload(8)))
        await settle()
        assert subject.downs == []  # the idle checker holding a rerun took the request
        (down,) = checker.downs
        assert sorted(down) == sorted(q.request_id for q in checker.requests) and len(down) == 2
        assert {q.input for q in checker.requests} == {payload(7), payload(8)}
        for q in checker.requests:  # one micro-batch answers both
            checker.up(replies=[serving_pb2.ServeReply(request_id=q.request_id, output=b"o", done=True, batch=1)])
        checker.send_receipt(checker.assigned[0], 1, down, [q.input for q in checker.requests], [b"o"] * 2)
        reran = await rerun
        assert reran is not None and reran.node == checker.signer.address
        assert (await call)[1] == checker.signer.address
        batch = await asyncio.wait_for(reran.receipted, 1)
        assert batch is not None and [q.input for q in batch.requests if q.rerun] == [payload(7)]
        assert batch.answered == 1  # the request is paid, its riding rerun is not (whatever id each went down under)

    run(scenario)


def test_a_rerun_is_sent_at_once_where_it_could_not_share_a_micro_batch() -> None:
    """With max_batch 1 (and generation, one prompt per micro-batch) a request sent with a rerun
    would wait for it to run first: the rerun goes alone, at once."""

    async def scenario() -> None:
        r = router()
        subject, checker = SimNode(r, answer=False), SimNode(r, answer=False)
        subject.connect(), checker.connect()
        r.add_endpoint(EP, ALICE, spec(min_replicas=2, max_batch=1), 0)
        await settle()
        rerun = asyncio.create_task(r.rerun(EP, payload(7), 0, subject.signer.address))
        await settle()
        assert [len(d) for d in checker.downs] == [1]
        rerun.cancel()
        await asyncio.gather(rerun, return_exceptions=True)

    run(scenario)


def test_a_held_rerun_goes_alone_when_no_request_comes_and_fails_over_with_its_replica() -> None:
    async def scenario() -> None:
        r = router()
        subject, checker = SimNode(r), SimNode(r)
        subject.connect(), checker.connect()
        r.add_endpoint(EP, ALICE, spec(min_replicas=2), 0)
        await settle()
        rerun = asyncio.create_task(r.rerun(EP, payload(7), 0, subject.signer.address))
        await settle()
        assert checker.downs == []
        reran = await asyncio.wait_for(rerun, riders.RIDE_WAIT_S + 1)
        assert reran is not None and [len(d) for d in checker.downs] == [1]

        r = router()  # a held rerun whose replica goes fails, never hangs
        subject, stalled = SimNode(r), SimNode(r, answer=False)
        subject.connect(), stalled.connect()
        r.add_endpoint(EP, ALICE, spec(min_replicas=2), 0)
        await settle()
        held = asyncio.create_task(r.rerun(EP, payload(9), 0, subject.signer.address))
        await settle()
        (replica,) = [x for x in r.endpoints[EP].replicas.values() if x.node == stalled.signer.address]
        assert len(replica.riders) == 1 and replica.busy == 0
        stalled.disconnect()
        assert await asyncio.wait_for(held, 1) is None
        assert stalled.downs == [] and not replica.riders

    run(scenario)


def test_a_rerun_whose_receipt_is_refused_hands_back_none() -> None:
    """At once, when the receipt is refused: not after the receipt wait (RECEIPT_WAIT_S + 1 s)."""

    async def scenario() -> None:
        r = router()
        subject, checker = SimNode(r), SimNode(r, receipt_tamper="digest")
        subject.connect(), checker.connect()
        r.add_endpoint(EP, ALICE, spec(min_replicas=2), 0)
        await settle()
        reran = await r.rerun(EP, payload(7), 0, subject.signer.address)
        assert reran is not None and reran.receipted is not None
        assert await asyncio.wait_for(reran.receipted, 1) is None
        assert r.mismatches == 1 and not r.reruns

    run(scenario)


def test_a_checks_rerun_is_receipted_but_not_billed() -> None:
    """The escrow pays for the submitter's requests; a sampled check's rerun on another replica
    is the grid's own cost (as a batch job's check task), though its node receipts it."""

    async def scenario() -> None:
        paid = Recorder()
        r = router(paid)
        a, b = SimNode(r), SimNode(r)
        a.connect(), b.connect()
        ep = r.add_endpoint(EP, ALICE, spec(min_replicas=2), 0)
        await settle()
        _, node, _ = await r.infer(ep, payload(1))
        await settle()
        rerun = await r.rerun(EP, payload(1), 0, node)
        await settle()
        assert rerun is not None and rerun.node != node
        billed = {(bt.node, bt.answered) for bt in paid.batches}
        assert billed == {(node, 1), (rerun.node, 0)}  # both receipted; the rerun's batch pays nothing
        assert sum(x.served for x in ep.replicas.values()) == 1
        assert not r.reruns  # nothing left to remember

    run(scenario)


def test_a_late_answer_keeps_its_batch_receipt_valid_and_only_it_goes_unpaid() -> None:
    """The node answered after the caller's deadline, in a micro-batch with an answer in time:
    the batch's receipt still matches, the answer in time is paid, the late one is not."""

    async def scenario() -> None:
        paid = Recorder()
        r = router(paid)
        node = SimNode(r, answer=False)
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()
        with pytest.raises(DeadlineExceeded):
            await r.infer(ep, payload(1), timeout_ms=30)  # no answer in time
        late_req = node.requests[0]
        in_time = asyncio.ensure_future(r.infer(ep, payload(2)))
        await settle()
        req = node.requests[1]
        outputs = [b"late", b"in time"]
        node.batch += 1
        for rq, out in zip((late_req, req), outputs, strict=True):
            node.up(replies=[serving_pb2.ServeReply(request_id=rq.request_id, output=out, done=True, batch=node.batch)])
        output, _, _ = await in_time
        assert output == b"in time"
        node.send_receipt(
            req.replica_id, node.batch, [late_req.request_id, req.request_id], [late_req.input, req.input], outputs
        )
        await settle()
        assert r.mismatches == 0
        (batch,) = paid.batches
        assert batch.answered == 1 and [x.ok for x in batch.requests] == [False, True]

    run(scenario)


def test_a_replica_streaming_more_tokens_than_asked_is_cut_off() -> None:
    """A generation replica may stream at most the endpoint's max_new_tokens for a request: a
    node streaming more (a flood the caller would be sent, kept in the coordinator's memory
    meanwhile) breaks the protocol, its stream is closed and the tokens past the bound never
    reach the caller."""

    async def scenario() -> None:
        r = router()
        node = SimNode(r, answer=False)
        link = node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(serves="generation", vocab_size=16, max_new_tokens=4), 0)
        await settle()
        got: list[int] = []

        async def caller() -> None:
            async for tokens, _, _, _ in r.generate(ep, payload(), timeout_ms=300):
                got.extend(tokens)

        task = asyncio.create_task(caller())
        await settle()
        rid = node.requests[0].request_id
        for _ in range(3):
            node.up(replies=[serving_pb2.ServeReply(request_id=rid, tokens=[1, 2, 3], done=False, batch=1)])
            await settle()
        assert link.violations == 1 and link.closed and node.signer.address not in r.links
        assert got == [1, 2, 3]  # the first chunk; the second would have passed the bound
        with pytest.raises(DeadlineExceeded):
            await task

    run(scenario)


def _answer(tokens: list[int], width: int = 4) -> bytes:
    ids = torch.zeros((1, width), dtype=torch.int64)
    ids[0, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    lengths = torch.tensor([len(tokens)], dtype=torch.int64)
    return tensors_to_bytes({"tokens": ids, "logprobs": torch.zeros((1, width)), "lengths": lengths})


def _stream(node: SimNode, rid: int, chunks: list[list[int]], answer: list[int]) -> None:
    for tokens in chunks:
        node.up(replies=[serving_pb2.ServeReply(request_id=rid, tokens=tokens, done=False, batch=1)])
    node.up(replies=[serving_pb2.ServeReply(request_id=rid, output=_answer(answer), done=True, batch=1)])


async def _generate(r: Router, ep: Endpoint, got: list[int]) -> bytes:
    output = b""
    async for tokens, done, out, _ in r.generate(ep, payload(), timeout_ms=2000):
        got.extend(tokens)
        output = out if done else output
    return output


def _generation_endpoint(r: Router, **kw: Any) -> Endpoint:
    return r.add_endpoint(EP, ALICE, spec(serves="generation", vocab_size=16, max_new_tokens=4, **kw), 0)


@pytest.mark.parametrize("answer", [[1, 2, 3], [1, 2, 7], [1, 2]])
def test_streamed_tokens_must_be_those_of_the_answer(answer: list[int]) -> None:
    """What a generation replica streams to the caller is covered by no receipt; its final
    answer is (and is what checks re-run). An answer that does not hold exactly the streamed
    tokens fails the request (ABORTED: discard what was streamed) and closes the replica's stream."""

    async def scenario() -> None:
        r = router()
        node = SimNode(r, answer=False)
        link = node.connect()
        ep = _generation_endpoint(r)
        await settle()
        got: list[int] = []
        task = asyncio.create_task(_generate(r, ep, got))
        await settle()
        _stream(node, node.requests[0].request_id, [[1, 2], [3]], answer)
        if answer == [1, 2, 3]:
            assert await task == _answer(answer) and got == answer and not link.closed
            return
        with pytest.raises(StreamMismatch, match="discard them"):
            await task
        assert link.violations == 1 and link.closed

    run(scenario)


async def _generating_on_two() -> tuple[Router, Endpoint, list[int], asyncio.Task[bytes], tuple[SimNode, SimNode]]:
    """A generation endpoint on two silent nodes, one request under way: (router, endpoint, the
    tokens its caller got, the caller's task, (the node it was sent to, the other))."""
    r = router()
    first, second = SimNode(r, answer=False), SimNode(r, answer=False)
    first.connect(), second.connect()
    ep = _generation_endpoint(r, min_replicas=2, max_replicas=2)
    await settle()
    got: list[int] = []
    task = asyncio.create_task(_generate(r, ep, got))
    await settle()
    return r, ep, got, task, ((first, second) if first.requests else (second, first))


def test_after_a_failover_an_answer_unlike_what_the_gone_replica_streamed_fails_the_request() -> None:
    """The caller got the first replica's tokens, then it died; the second replica's answer (it
    streamed consistently with it) differs from what the first sent: the request fails, and the
    second replica, which did nothing wrong, keeps its stream."""

    async def scenario() -> None:
        r, ep, got, task, (liar, honest) = await _generating_on_two()
        rid = liar.requests[0].request_id
        liar.up(replies=[serving_pb2.ServeReply(request_id=rid, tokens=[9, 9], done=False, batch=1)])
        await settle()
        assert got == [9, 9]
        liar.disconnect()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if honest.requests:
                break
        _stream(honest, honest.requests[0].request_id, [[1, 2], [3]], [1, 2, 3])
        with pytest.raises(StreamMismatch):
            await task
        assert got == [9, 9, 3]  # the honest replica's first two tokens were skipped as sent already
        assert honest.link is not None and honest.link.violations == 0 and not honest.link.closed

    run(scenario)


async def _two_replicas(liar_fails: str, other_fails: str = "") -> tuple[Router, Endpoint, SimNode, SimNode]:
    r = router()
    liar, other = SimNode(r, fail=liar_fails), SimNode(r, fail=other_fails)
    liar.connect(), other.connect()
    ep = r.add_endpoint(EP, ALICE, spec(min_replicas=2, max_replicas=2), 0)
    await settle()
    assert len(ep.ready()) == 2
    return r, ep, liar, other


def _replica_of(ep: Endpoint, node: SimNode) -> Any:
    return next((x for x in ep.replicas.values() if x.node == node.signer.address), None)


@pytest.mark.parametrize("kind", ["released", "crashed", "execution", "out_of_memory"])
def test_a_replicas_own_error_sends_the_request_to_another_replica(kind: str) -> None:
    """A replica failing a request by its own fault (released as its node drains, its worker
    crashed, over its limits) is not the caller's error: the request goes to another replica,
    as for a broken stream, and the failing replica is struck (released after 3 in a row)."""

    async def scenario() -> None:
        r, ep, bad, good = await _two_replicas(kind)
        for i in range(12):  # two at a time: one on each replica
            for output, node, _ in await asyncio.gather(r.infer(ep, payload(i)), r.infer(ep, payload(i + 100))):
                assert node == good.signer.address and output.startswith(b"out:")
            if _replica_of(ep, bad) is None:
                break
        assert len(bad.requests) == 3 and _replica_of(ep, bad) is None  # struck out: released
        assert bad.signer.address in ep.failed_at  # and kept off the endpoint for a while

    run(scenario)


def test_an_error_blaming_the_request_is_asked_of_another_node_once() -> None:
    """A replica saying every request is invalid (lying, or broken) cannot fail the endpoint's
    callers while another node's replica answers: each request it fails is asked of the other
    once; the liar is struck and released after 3 in a row."""

    async def scenario() -> None:
        r, ep, liar, honest = await _two_replicas("invalid_input")
        for i in range(12):  # two at a time: one on each replica
            for output, node, _ in await asyncio.gather(r.infer(ep, payload(i)), r.infer(ep, payload(i + 100))):
                assert node == honest.signer.address and output.startswith(b"out:")
            if _replica_of(ep, liar) is None:
                break
        assert len(liar.requests) == 3 and _replica_of(ep, liar) is None

    run(scenario)


def test_a_request_both_nodes_refuse_fails_after_two_runs_and_blames_no_replica() -> None:
    async def scenario() -> None:
        r, ep, a, b = await _two_replicas("invalid_input", "program_error")
        for i in range(4):
            for failed in await asyncio.gather(
                r.infer(ep, payload(i)), r.infer(ep, payload(i + 100)), return_exceptions=True
            ):
                assert isinstance(failed, RequestFailed) and "simulated" in str(failed)
        assert len(a.requests) == len(b.requests) == 8  # each request: one run, one second opinion
        assert all(x.missed == 0 for x in ep.replicas.values()) and len(ep.ready()) == 2

    run(scenario)


def test_a_request_every_replica_fails_by_its_own_fault_is_tried_at_most_max_tries() -> None:
    async def scenario() -> None:
        r, ep, a, b = await _two_replicas("crashed", "crashed")
        with pytest.raises(RequestFailed, match="simulated"):
            await r.infer(ep, payload())
        assert len(a.requests) + len(b.requests) == 3

    run(scenario)


def test_a_generation_replicas_own_error_fails_over_without_repeating_tokens() -> None:
    async def scenario() -> None:
        r, ep, got, task, (crashed, other) = await _generating_on_two()
        rid = crashed.requests[0].request_id
        crashed.up(replies=[serving_pb2.ServeReply(request_id=rid, tokens=[1, 2], done=False, batch=1)])
        failed = serving_pb2.ServeReply(request_id=rid, done=True, batch=1)
        failed.error.CopyFrom(serde.error_to_pb(TaskError(ErrorKind.CRASHED, "its worker died")))
        crashed.up(replies=[failed])
        for _ in range(50):
            await asyncio.sleep(0.01)
            if other.requests:
                break
        _stream(other, other.requests[0].request_id, [[1, 2], [3]], [1, 2, 3])
        assert await task == _answer([1, 2, 3]) and got == [1, 2, 3]
        assert _replica_of(ep, crashed).missed == 1  # a strike

    run(scenario)
