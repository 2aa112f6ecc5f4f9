"""The referee's re-runs of checked requests, several per call to its sandboxed child
(serving.referee_batches), run for real: each request keeps its own verdict, one wrong answer
in a batch catches exactly its node, and a batch whose call fails is run again request by
request with the same verdicts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.repositories.ledger import slashing
from coordinator.services.serving import rerun
from coordinator.services.serving.hooks import ServedBatch, ServedRequest
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.sandbox.oneshot import CRASHED
from tensorgrid.serving import arrays_to_bytes, batch_receipt, tensors_to_bytes
from tests.unit.coordinator.conftest import SharedReferee
from tests.unit.coordinator.test_serving_accounting import EP, credit_rows
from tests.unit.coordinator.test_serving_checks import (  # noqa: F401  (the endpoint fixture)
    DOMAIN,
    NODE,
    REASON,
    SIGNER,
    Endpoint,
    Grid,
    endpoint,
)

OTHERS = [Signer.generate() for _ in range(2)]  # two more answering nodes, each its own replica
REPLICAS = ["0a" * 32, "0b" * 32, "0c" * 32]


@pytest.fixture
def grid(tmp_path: Path, shared_referee: SharedReferee, endpoint: Endpoint) -> Iterator[Grid]:  # noqa: F811
    g = Grid(tmp_path, shared_referee, endpoint)
    g.checks.batches.window_s = 3600.0  # a batch runs when full: the three checks below, together
    g.checks.batches.most = 3
    yield g
    g.close()


def batch_of(node: int, number: int, x: torch.Tensor, output: bytes) -> ServedBatch:
    """A micro-batch of one request answered by node 0 (the checks' NODE), 1 or 2."""
    signer = [SIGNER, *OTHERS][node]
    data = tensors_to_bytes({"x": x})
    receipt = sign_receipt(signer, DOMAIN, batch_receipt(EP, REPLICAS[node], number, [number], [data], [output]))
    request = ServedRequest(number, data, output, True)
    return ServedBatch(EP, REPLICAS[node], signer.address, "cpu", number, receipt, (request,))


async def serve_together(grid: Grid, batches: list[ServedBatch]) -> None:
    """The router's part for each batch (receipt verified, counted, drawn), then wait for the checks."""
    for batch in batches:
        grid.accounting.record(batch)
    await grid.accounting.flush()
    for batch in batches:
        grid.checks.after_batch(batch, grid.spec)
    for _ in range(1200):
        if grid.checks._waiting == 0:
            break
        await asyncio.sleep(0.05)
    await grid.checks.flush()
    for _ in range(20):  # a voided credit is taken back in the background
        await asyncio.sleep(0.01)


def three_answers(grid: Grid) -> list[ServedBatch]:
    """Three nodes' answers, checked by the referee alone (no other replica): node 1's is wrong."""
    xs = [torch.rand(2, 4), torch.rand(1, 4), torch.rand(3, 4)]
    grid.rerun_answer = None
    return [batch_of(n, 10 + n, x, grid.answer(x, 0.5 if n == 1 else 0.0)) for n, x in enumerate(xs)]


def assert_only_node_1_caught(grid: Grid, batches: list[ServedBatch]) -> None:
    wrong = OTHERS[0].address
    assert grid.checks.counts(EP) == (3, 1) and grid.checks.unverified == 0
    assert grid.caught == [(wrong, REASON)]
    assert grid.reputation(NODE) == (1, 0) and grid.reputation(OTHERS[1].address) == (1, 0)
    assert grid.reputation(wrong) == (0, 1)
    assert [(r[0], r[4]) for r in credit_rows(grid.state)] == [(NODE, False), (wrong, True), (OTHERS[1].address, False)]
    with grid.state.engine.connect() as conn:
        (slash,) = slashing.slashes(conn, job_id=EP)
        caught = conn.execute(select(s.events.c.node).where(s.events.c.kind == "caught")).scalars().all()
    assert (slash["node"], slash["task_id"]) == (wrong, batches[1].receipt.task_id)
    assert caught == [wrong]


def test_checked_requests_share_one_referee_call_and_one_wrong_answer_catches_its_node_only(grid: Grid) -> None:
    batches = three_answers(grid)
    asyncio.run(serve_together(grid, batches))
    assert_only_node_1_caught(grid, batches)
    # one call for the three answers; the wrong one's verdict is then made sound as before
    # (run again alone: the same answer twice), the only other call
    assert grid.checks.batches.calls == 1 and grid.refereed == 2


def test_a_batch_whose_call_fails_is_run_again_request_by_request(grid: Grid, monkeypatch: pytest.MonkeyPatch) -> None:
    # A limit or a crash of the child ends the batch's call for all of its requests: none of
    # them may go unchecked (nor be blamed) for it. Each runs alone, as before batching.
    def crashed(*args: object, **kwargs: object) -> list[str | None]:
        raise SandboxFailure(CRASHED, "the referee's child died")

    monkeypatch.setattr(rerun, "reexecute_each", crashed)
    batches = three_answers(grid)
    asyncio.run(serve_together(grid, batches))
    assert_only_node_1_caught(grid, batches)
    assert grid.checks.batches.calls == 4  # the failed batch, then one call each


def test_a_request_the_program_fails_on_decides_nothing_and_spares_its_batch_mates(grid: Grid) -> None:
    # One request the graph cannot run (here a wrong width) fails alone inside the batch's
    # call: its check decides nothing, as a lone re-run that failed decided nothing, and the
    # other two are decided in the same call.
    good = [torch.rand(2, 4), torch.rand(1, 4)]
    bad = torch.rand(2, 5)
    batches = [batch_of(n, 10 + n, x, grid.answer(x)) for n, x in enumerate(good)]
    batches.append(batch_of(2, 12, bad, tensors_to_bytes({"output": torch.zeros(2, 3)})))
    grid.rerun_answer = None
    asyncio.run(serve_together(grid, batches))
    assert grid.checks.counts(EP) == (2, 0) and grid.checks.unverified == 1
    assert grid.caught == [] and grid.reputation(OTHERS[1].address) == (0, 0)
    assert grid.reputation(NODE) == (1, 0) and grid.reputation(OTHERS[0].address) == (1, 0)
    assert grid.checks.batches.calls == 1 and grid.refereed == 1


def test_a_batch_answers_what_each_request_alone_would(grid: Grid, endpoint: Endpoint) -> None:  # noqa: F811
    # Each request runs alone inside the call (all its rows, one forward pass), as
    # rerun.run_request runs it: the batch changes how many calls, never an answer.
    xs = [torch.rand(2, 4), torch.rand(1, 4), torch.rand(3, 4)]
    requests = [ServedRequest(n, tensors_to_bytes({"x": x}), b"", True) for n, x in enumerate(xs)]
    together = rerun.run_requests(grid.rt, grid.blobs, grid.spec, requests)
    alone = [rerun.run_request(grid.rt, grid.blobs, grid.spec, r) for r in requests]
    for mine, theirs in zip(together, alone, strict=True):
        assert not isinstance(mine, str)
        assert mine.keys() == theirs.keys() == {"output"}
        assert arrays_to_bytes(mine) == arrays_to_bytes(theirs)  # bit for bit
