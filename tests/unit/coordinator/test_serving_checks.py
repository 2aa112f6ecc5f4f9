"""Sampled checks of served requests: the draw, and a check's verdicts with the referee run for
real (a tiny exported model, in the coordinator's sandboxed child) on a SQLite database."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.repositories.ledger import slashing
from coordinator.repositories.store import Store
from coordinator.services.runtime import Runtime
from coordinator.services.serving.accounting import Accounting
from coordinator.services.serving.checks import Checks
from coordinator.services.serving.hooks import ServedBatch, ServedRequest
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.serving import batch_receipt, tensors_to_bytes
from tensorgrid.spec import EndpointSpec
from tensorgrid.types import Domain
from tensorgrid.workloads.model import export_program
from tests.unit.coordinator.test_serving_accounting import EP, PRICE, R1, add_endpoint, credit_rows

DOMAIN = Domain("TensorGrid", "1", 31337, "0x" + "cc" * 20)
SIGNER = Signer.generate()
NODE = SIGNER.address
CHECKER = "0x" + "c4" * 20


def test_the_draw_matches_the_rate_and_needs_the_secret() -> None:
    rt = Runtime(inline_db=True, db_threads=1)
    ours, theirs = (Checks(rt, None, None, secrets.token_bytes(32), None, None, None) for _ in range(2))  # type: ignore[arg-type]
    n, rate = 20_000, 0.1
    drawn = {i for i in range(n) if ours.draw(EP, R1, i) < rate}
    assert abs(len(drawn) / n - rate) < 0.01
    assert drawn == {i for i in range(n) if ours.draw(EP, R1, i) < rate}  # the same request, the same draw
    guessed = {i for i in range(n) if theirs.draw(EP, R1, i) < rate}  # another secret: no better than chance
    assert abs(len(drawn & guessed) / len(drawn) - rate) < 0.03
    other_replica = {i for i in range(n) if ours.draw(EP, "02" * 32, i) < rate}
    assert abs(len(drawn & other_replica) / len(drawn) - rate) < 0.03


class Grid:
    """A store, a blob store with the endpoint's model, accounting and checks with a fake rerun."""

    def __init__(self, tmp: Path) -> None:
        self.state = Store(f"sqlite:///{tmp / 'state.db'}")
        self.blobs = BlobStore(tmp / "blobs")
        self.rt = Runtime(inline_db=True, db_threads=1)
        torch.manual_seed(0)
        self.module = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
        export_program(self.module, (torch.rand(2, 4),), tmp / "model.pt2")
        self.spec = EndpointSpec(model=self.blobs.put_file(tmp / "model.pt2"), check_rate=1.0, max_requests=10,
                                 reward_per_task_wei=PRICE)  # fmt: skip
        add_endpoint(self.state)
        self.accounting = Accounting(self.rt, self.state.engine)
        self.rerun_answer: bytes | None = None
        self.caught: list[tuple[str, str]] = []
        self.checks = Checks(self.rt, self.state, self.blobs, b"s" * 32, self.accounting, self.rerun, self.on_caught)

    async def rerun(self, endpoint_id: str, data: bytes, seed: int, exclude: str) -> tuple[str, bytes] | None:
        assert exclude == NODE and endpoint_id == EP
        return None if self.rerun_answer is None else (CHECKER, self.rerun_answer)

    def on_caught(self, batch: ServedBatch, reason: str) -> None:
        self.caught.append((batch.node, reason))

    def answer(self, x: torch.Tensor, shift: float = 0.0) -> bytes:
        with torch.no_grad():
            out = self.module(x)
        return tensors_to_bytes({"output": out + shift})  # how a replica names one output

    def batch(self, number: int, x: torch.Tensor, output: bytes) -> ServedBatch:
        data = tensors_to_bytes({"x": x})
        receipt = sign_receipt(SIGNER, DOMAIN, batch_receipt(EP, R1, number, [number], [data], [output]))
        return ServedBatch(EP, R1, NODE, "cpu", number, receipt, (ServedRequest(number, data, output, True),))

    async def serve(self, batch: ServedBatch) -> None:
        """What the router does with a batch whose receipt verified; then wait for its checks."""
        self.accounting.record(batch)
        await self.accounting.flush()
        self.checks.after_batch(batch, self.spec)
        for _ in range(1200):
            if self.checks._waiting == 0:
                break
            await asyncio.sleep(0.05)
        for _ in range(20):  # a voided credit is taken back in the background
            await asyncio.sleep(0.01)

    def reputation(self, node: str) -> tuple[int, int]:
        rep = self.state.verification.reputation(node)
        return rep.verified, rep.caught

    def close(self) -> None:
        if self.rt.referee is not None:
            self.rt.referee.close()
        self.state.close()


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[Grid]:
    g = Grid(tmp_path)
    yield g
    g.close()


def test_sampled_checks_verify_right_answers_and_catch_a_wrong_one(grid: Grid) -> None:
    x = torch.rand(2, 4)
    wrong = grid.batch(3, x, grid.answer(x, 0.5))

    async def scenario() -> None:
        # another replica gives the same answer: verified, the referee not needed
        grid.rerun_answer = grid.answer(x)
        await grid.serve(grid.batch(1, x, grid.answer(x)))
        assert grid.checks.counts(EP) == (1, 0) and grid.rt.referee is None
        # no other replica: the referee runs the request itself and agrees
        grid.rerun_answer = None
        await grid.serve(grid.batch(2, x, grid.answer(x, 1e-7)))  # within the float tolerance
        assert grid.checks.counts(EP) == (2, 0) and grid.rt.referee is not None
        # the node answers wrong; the other replica right: the referee decides against the node
        grid.rerun_answer = grid.answer(x)
        await grid.serve(wrong)
        assert grid.checks.counts(EP) == (3, 1)
        assert grid.caught == [(NODE, "the answer differs from the coordinator's re-execution")]

    asyncio.run(scenario())
    assert grid.reputation(NODE) == (2, 1)
    rows = credit_rows(grid.state)
    assert [(r[3], r[4]) for r in rows] == [(PRICE, False), (PRICE, False), (PRICE, True)]  # the wrong one voided
    assert grid.accounting.spent_wei(EP) == 2 * PRICE
    with grid.state.engine.connect() as conn:
        (slash,) = slashing.slashes(conn, job_id=EP)
        events = conn.execute(select(s.events.c.kind, s.events.c.node).where(s.events.c.job_id == EP)).all()
    assert (slash["node"], slash["task_id"], slash["attempt"]) == (NODE, wrong.receipt.task_id, 0)
    assert slash["amount_wei"] == 10 * PRICE and slash["correct_output"] != wrong.receipt.output_hash
    assert ("caught", NODE) in [tuple(e) for e in events]


def test_a_wrong_checking_replica_is_caught_and_the_right_node_verified(grid: Grid) -> None:
    x = torch.rand(3, 4)
    grid.rerun_answer = grid.answer(x, -0.5)
    asyncio.run(grid.serve(grid.batch(1, x, grid.answer(x))))
    assert grid.checks.counts(EP) == (1, 1)
    assert grid.caught == [(CHECKER, "its rerun of a sampled request differs from the coordinator's re-execution")]
    assert grid.reputation(NODE) == (1, 0) and grid.reputation(CHECKER) == (0, 1)
    assert [r[4] for r in credit_rows(grid.state)] == [False]  # the node's batch stays paid
    with grid.state.engine.connect() as conn:
        assert slashing.slashes(conn) == []  # no receipt of the checker's rerun here: no slash


class Centred(torch.nn.Module):
    """Each output row depends on its batch-mates (minus the batch mean): not verifiable row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return y - y.mean(0)


def test_a_row_dependent_program_blames_no_honest_node(grid: Grid, tmp_path: Path) -> None:
    module = Centred().eval()
    export_program(module, (torch.rand(2, 4),), tmp_path / "centred.pt2")
    grid.spec = EndpointSpec(model=grid.blobs.put_file(tmp_path / "centred.pt2"), check_rate=1.0, max_requests=10,
                             reward_per_task_wei=PRICE)  # fmt: skip
    x1, x2 = torch.rand(2, 4), torch.rand(2, 4)
    with torch.no_grad():  # the replica ran both requests in one forward pass, honestly
        joined = module(torch.cat([x1, x2]))
    inputs = [tensors_to_bytes({"x": x}) for x in (x1, x2)]
    outputs = [tensors_to_bytes({"output": part}) for part in joined.split(2)]
    receipt = sign_receipt(SIGNER, DOMAIN, batch_receipt(EP, R1, 1, [1, 2], inputs, outputs))
    requests = tuple(ServedRequest(i + 1, inputs[i], outputs[i], True) for i in range(2))
    asyncio.run(grid.serve(ServedBatch(EP, R1, NODE, "cpu", 1, receipt, requests)))
    assert grid.checks.counts(EP) == (0, 0) and grid.checks.unverified == 2
    assert grid.caught == [] and grid.reputation(NODE) == (0, 0)
    assert [r[4] for r in credit_rows(grid.state)] == [False]
