"""Serving's Prometheus metrics, read from the coordinator's registry after routed requests:
outcomes and latency counted per request, batches, checks and replicas read at scrape time."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.services.metrics import Metrics
from coordinator.services.serving.errors import DeadlineExceeded, Saturated
from coordinator.services.serving.hooks import ServedBatch
from coordinator.services.serving.router import Router
from tensorgrid.spec import EndpointSpec
from tests.unit.coordinator.serving_sim import DOMAIN, Recorder, SimNode, spec
from tests.unit.coordinator.test_serving_router import ALICE, EP, Clock, payload, run, settle


class Counted:
    """Checks with running totals, as services.serving.checks.Checks keeps them."""

    verified, caught, unverified, dropped = 5, 2, 1, 3

    def after_batch(self, batch: ServedBatch, spec: EndpointSpec) -> None:
        return None

    def counts(self, endpoint_id: str) -> tuple[int, int]:
        return (0, 0)


def test_serving_metrics_count_requests_batches_checks_and_replicas() -> None:
    metrics = Metrics()
    value = metrics.registry.get_sample_value

    async def scenario() -> None:
        r = Router(DOMAIN, Recorder(), Counted(), clock=Clock(), metrics=metrics.serving)
        metrics.watch_serving(r)
        node = SimNode(r)
        node.connect()
        ep = r.add_endpoint(EP, ALICE, spec(max_replicas=1, max_queue=1), 0)
        await settle()
        r.tick()
        assert value("tensorgrid_serve_replicas", {"state": "ready"}) == 1
        for i in range(2):
            await r.infer(ep, payload(i))
        node.receipt_tamper = "digest"  # answered, but its receipt is refused: not paid
        await r.infer(ep, payload(2))
        await settle()
        node.answer = False
        with pytest.raises(DeadlineExceeded):
            await r.infer(ep, payload(3), timeout_ms=30)
        waiting = asyncio.create_task(r.infer(ep, payload(4)))
        await settle()
        with pytest.raises(Saturated):  # the one replica holds max_queue calls
            await r.infer(ep, payload(5))
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        node.disconnect()
        r.tick()

    run(scenario)
    outcomes = {o: value("tensorgrid_serve_requests_total", {"outcome": o}) for o in ("answered", "failed", "refused")}
    assert outcomes == {"answered": 3, "failed": 1, "refused": 1}
    assert value("tensorgrid_serve_request_seconds_count") == 3
    assert 0 < (value("tensorgrid_serve_request_seconds_sum") or 0) < 3
    assert value("tensorgrid_serve_batches_total", {"outcome": "receipted"}) == 2
    assert value("tensorgrid_serve_batches_total", {"outcome": "refused"}) == 1
    checks = {o: value("tensorgrid_serve_checks_total", {"outcome": o}) for o in ("verified", "caught", "unverified")}
    assert checks == {"verified": 5, "caught": 2, "unverified": 1}
    assert value("tensorgrid_serve_checks_total", {"outcome": "dropped"}) == 3
    assert value("tensorgrid_serve_replicas", {"state": "ready"}) == 0  # its node went away
    text = "\n".join(str(m) for m in metrics.registry.collect())
    assert EP not in text and EP[:12] not in text  # no endpoint id is a label
