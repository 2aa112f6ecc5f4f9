"""Receipts held for a quiet moment (coordinator/services/serving/links.py): checked once a
request has gone down a stream, after receipt_delay_s at the latest, and before a stream that
ends is forgotten; never lost, never paid before they are checked."""

from __future__ import annotations

import asyncio

import torch

from coordinator.services.serving.router import Router
from tensorgrid.serving import tensors_to_bytes
from tests.unit.coordinator.serving_sim import DOMAIN, Recorder, SimNode, spec

EP = "ce" * 32
ALICE = "0x" + "aa" * 20
DATA = tensors_to_bytes({"x": torch.ones(1, 4)})


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _answered_once(delay_s: float) -> tuple[Router, Recorder, SimNode]:
    paid = Recorder()
    r = Router(DOMAIN, paid, receipt_delay_s=delay_s)
    node = SimNode(r)
    node.connect()
    ep = r.add_endpoint(EP, ALICE, spec(), 0)
    await settle()
    output, _, _ = await r.infer(ep, DATA)
    assert output.startswith(b"out:")
    await settle()
    return r, paid, node


def test_a_held_receipt_is_checked_once_a_request_goes_down_a_stream() -> None:
    async def scenario() -> None:
        r, paid, _ = await _answered_once(60.0)
        assert paid.batches == []  # held: the caller was answered, the receipt waits
        r.check_receipts()  # what the Serve handler does once it wrote a request down
        assert len(paid.batches) == 1 and paid.batches[0].answered == 1
        r.check_receipts()  # nothing held twice
        assert len(paid.batches) == 1

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_held_receipt_is_checked_after_the_delay_at_the_latest() -> None:
    async def scenario() -> None:
        _, paid, _ = await _answered_once(0.01)
        for _ in range(100):
            if paid.batches:
                break
            await asyncio.sleep(0.01)
        assert len(paid.batches) == 1

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_stream_that_ends_has_its_held_receipts_checked_first() -> None:
    async def scenario() -> None:
        _, paid, node = await _answered_once(60.0)
        assert paid.batches == []
        node.disconnect()
        assert len(paid.batches) == 1

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_refused_receipt_held_is_still_refused() -> None:
    async def scenario() -> None:
        paid = Recorder()
        r = Router(DOMAIN, paid, receipt_delay_s=60.0)
        node = SimNode(r, receipt_tamper="digest")
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(), 0)
        await settle()
        await r.infer(ep, DATA)
        await settle()
        r.check_receipts()
        assert paid.batches == [] and r.mismatches == 1

    asyncio.run(asyncio.wait_for(scenario(), 20))
