"""Sampled checks of served requests: the draw, and a check's verdicts with the referee run for
real (a tiny exported model, in the coordinator's sandboxed child) on a SQLite database."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import insert, select

from coordinator.db import schema as s
from coordinator.repositories.ledger import slashing
from coordinator.repositories.store import Store
from coordinator.services.runtime import Runtime
from coordinator.services.serving import checks as checks_module
from coordinator.services.serving.accounting import Accounting
from coordinator.services.serving.checks import Checks
from coordinator.services.serving.hooks import Reran, ServedBatch, ServedRequest
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.serving import batch_receipt, tensors_to_bytes
from tensorgrid.spec import EndpointSpec
from tensorgrid.types import BlobRef, Domain
from tensorgrid.workloads.model import export_program
from tests.unit.coordinator.conftest import SharedReferee
from tests.unit.coordinator.test_serving_accounting import EP, PRICE, R1, R2, add_endpoint, credit_rows

DOMAIN = Domain("TensorGrid", "1", 31337, "0x" + "cc" * 20)
SIGNER = Signer.generate()
NODE = SIGNER.address
CHECKER_SIGNER = Signer.generate()
CHECKER = CHECKER_SIGNER.address
REASON = "the answer differs from the coordinator's re-execution"
CHECKER_REASON = "its rerun of a sampled request differs from the coordinator's re-execution"


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


@dataclass
class Endpoint:
    """The endpoint's model, exported once a module into the shared referee's blob store."""

    module: torch.nn.Module
    model: BlobRef


@pytest.fixture(scope="module")
def endpoint(shared_referee: SharedReferee, tmp_path_factory: pytest.TempPathFactory) -> Endpoint:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    path = tmp_path_factory.mktemp("endpoint") / "model.pt2"
    export_program(module, (torch.rand(2, 4),), path)
    return Endpoint(module, shared_referee.blobs.put_file(path))


class Grid:
    """A store, a blob store with the endpoint's model, accounting and checks with a fake rerun;
    the referee (the blob store's reader) is the module's, its calls counted from here."""

    def __init__(self, tmp: Path, referee: SharedReferee, endpoint: Endpoint) -> None:
        self.state = Store(f"sqlite:///{tmp / 'state.db'}")
        self.blobs = referee.blobs
        self.referee, self.calls_before = referee.sandbox, referee.sandbox.calls
        self.rt = referee.runtime()
        self.module = endpoint.module
        self.spec = EndpointSpec(model=endpoint.model, check_rate=1.0, max_requests=10, reward_per_task_wei=PRICE)
        add_endpoint(self.state)
        self.accounting = Accounting(self.rt, self.state.engine)
        self.rerun_answer: bytes | None = None
        self.rerun_receipted = True  # the checker's micro-batch receipt verifies
        self.rerun_mate: torch.Tensor | None = None  # another request in the checker's micro-batch
        self.checker_batches: list[ServedBatch] = []
        self.caught: list[tuple[str, str]] = []
        self.checks = Checks(self.rt, self.state, self.blobs, b"s" * 32, self.accounting, self.rerun, self.on_caught)

    async def rerun(self, endpoint_id: str, data: bytes, seed: int, exclude: str) -> Reran | None:
        """As the router does: the request on another replica, its micro-batch receipted (its
        rerun marked, so unpaid; a batch-mate paid), handed to the check through `receipted`."""
        assert exclude == NODE and endpoint_id == EP
        if self.rerun_answer is None:
            return None
        number = 100 + len(self.checker_batches)
        ids, inputs, outputs = [number], [data], [self.rerun_answer]
        if self.rerun_mate is not None:
            ids.append(number + 50)
            inputs.append(tensors_to_bytes({"x": self.rerun_mate}))
            outputs.append(self.answer(self.rerun_mate))
        receipt = sign_receipt(CHECKER_SIGNER, DOMAIN, batch_receipt(EP, R2, number, ids, inputs, outputs))
        triples = zip(ids, inputs, outputs, strict=True)
        requests = tuple(ServedRequest(i, d, o, True, rerun=i == number) for i, d, o in triples)
        theirs = ServedBatch(EP, R2, CHECKER, "cpu", number, receipt, requests)
        self.checker_batches.append(theirs)
        self.accounting.record(theirs)
        await self.accounting.flush()
        receipted: asyncio.Future[ServedBatch | None] = asyncio.get_running_loop().create_future()
        receipted.set_result(theirs if self.rerun_receipted else None)
        return Reran(CHECKER, self.rerun_answer, number, receipted)

    def trust(self, *nodes: str) -> None:
        """Make nodes trusted for the endpoint as trust.streak_for_job wants: a streak of 10 and
        paid verified results from three other submitters worth 10 times its price."""
        with self.state.engine.begin() as conn:
            for node in nodes:
                conn.execute(insert(s.reputation).values(address=node, consecutive_valid=10, verified=0, caught=0))
                for k in range(3):
                    conn.execute(
                        insert(s.trust_earnings).values(
                            address=node, submitter="0x" + f"{k + 1:02x}" * 20, earned_wei=4 * PRICE, results=4
                        )
                    )

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
        await self.checks.flush()  # verified verdicts are written once a second (Checks.run)
        for _ in range(20):  # a voided credit is taken back in the background
            await asyncio.sleep(0.01)

    def reputation(self, node: str) -> tuple[int, int]:
        rep = self.state.verification.reputation(node)
        return rep.verified, rep.caught

    @property
    def refereed(self) -> int:
        """Requests this test made of the referee."""
        return self.referee.calls - self.calls_before

    def close(self) -> None:
        self.state.close()


@pytest.fixture
def grid(tmp_path: Path, shared_referee: SharedReferee, endpoint: Endpoint) -> Iterator[Grid]:
    g = Grid(tmp_path, shared_referee, endpoint)
    yield g
    g.close()


def test_sampled_checks_verify_right_answers_and_catch_a_wrong_one(grid: Grid) -> None:
    x = torch.rand(2, 4)
    wrong = grid.batch(3, x, grid.answer(x, 0.5))
    grid.trust(NODE, CHECKER)

    async def scenario() -> None:
        # another replica gives the same answer, both nodes trusted: verified, no referee
        grid.rerun_answer = grid.answer(x)
        await grid.serve(grid.batch(1, x, grid.answer(x)))
        assert grid.checks.counts(EP) == (1, 0) and grid.refereed == 0
        # no other replica: the referee runs the request itself and agrees
        grid.rerun_answer = None
        await grid.serve(grid.batch(2, x, grid.answer(x, 1e-7)))  # within the float tolerance
        assert grid.checks.counts(EP) == (2, 0) and grid.refereed > 0
        # the node answers wrong; the other replica right: the referee decides against the node
        grid.rerun_answer = grid.answer(x)
        await grid.serve(wrong)
        assert grid.checks.counts(EP) == (3, 1)
        assert grid.caught == [(NODE, REASON)]

    asyncio.run(scenario())
    assert grid.reputation(NODE) == (2, 1) and grid.reputation(CHECKER) == (2, 0)
    assert (grid.checks.verified, grid.checks.caught) == (2, 1)
    rows = credit_rows(grid.state)
    assert [(r[3], r[4]) for r in rows] == [(PRICE, False), (PRICE, False), (PRICE, True)]  # the wrong one voided
    assert grid.accounting.spent_wei(EP) == 2 * PRICE  # the checker's reruns: unpaid
    with grid.state.engine.connect() as conn:
        (slash,) = slashing.slashes(conn, job_id=EP)
        events = conn.execute(select(s.events.c.kind, s.events.c.node).where(s.events.c.job_id == EP)).all()
    assert (slash["node"], slash["task_id"], slash["attempt"]) == (NODE, wrong.receipt.task_id, 0)
    assert slash["amount_wei"] == 10 * PRICE and slash["correct_output"] != wrong.receipt.output_hash
    assert ("caught", NODE) in [tuple(e) for e in events]


def test_an_untrusted_agreeing_pair_goes_to_the_referee_and_a_colluding_pair_is_caught(grid: Grid) -> None:
    x = torch.rand(2, 4)
    lie = grid.answer(x, 0.25)
    colluded = grid.batch(2, x, lie)

    async def scenario() -> None:
        grid.rerun_answer = grid.answer(x)  # both right, neither trusted: the referee confirms
        await grid.serve(grid.batch(1, x, grid.answer(x)))
        assert grid.refereed > 0 and grid.checks.counts(EP) == (1, 0)
        grid.rerun_answer = lie  # one operator's two replicas agree on a wrong answer
        await grid.serve(colluded)

    asyncio.run(scenario())
    assert grid.checks.counts(EP) == (2, 2)
    assert grid.caught == [(NODE, REASON), (CHECKER, CHECKER_REASON)]
    assert grid.reputation(NODE) == (1, 1) and grid.reputation(CHECKER) == (1, 1)
    with grid.state.engine.connect() as conn:
        slashed = {(r["node"], r["task_id"]) for r in slashing.slashes(conn, job_id=EP)}
    assert slashed == {(NODE, colluded.receipt.task_id), (CHECKER, grid.checker_batches[1].receipt.task_id)}


def test_an_agreement_the_referee_cannot_confirm_verifies_no_one(grid: Grid) -> None:
    x = torch.rand(2, 4)
    grid.rerun_answer = grid.answer(x)
    grid.spec = EndpointSpec(model=grid.blobs.put_bytes(b"not a program"), check_rate=1.0, max_requests=10,
                             reward_per_task_wei=PRICE)  # fmt: skip
    asyncio.run(grid.serve(grid.batch(1, x, grid.answer(x))))
    assert grid.checks.counts(EP) == (0, 0) and grid.checks.unverified == 1
    assert grid.reputation(NODE) == (0, 0) and grid.reputation(CHECKER) == (0, 0)


def test_a_wrong_checking_replica_is_voided_and_slashed_with_its_receipt(grid: Grid) -> None:
    x = torch.rand(3, 4)
    grid.rerun_answer = grid.answer(x, -0.5)
    grid.rerun_mate = torch.rand(1, 4)  # its micro-batch also answered a paid request
    asyncio.run(grid.serve(grid.batch(1, x, grid.answer(x))))
    (theirs,) = grid.checker_batches
    assert grid.checks.counts(EP) == (1, 1)
    assert grid.caught == [(CHECKER, CHECKER_REASON)]
    assert grid.reputation(NODE) == (1, 0) and grid.reputation(CHECKER) == (0, 1)
    # the node's batch stays paid; the checker's (its batch-mate's price) is taken back
    assert [(r[0], r[3], r[4]) for r in credit_rows(grid.state)] == [(NODE, PRICE, False), (CHECKER, PRICE, True)]
    with grid.state.engine.connect() as conn:
        (slash,) = slashing.slashes(conn)
    assert (slash["node"], slash["task_id"], slash["attempt"]) == (CHECKER, theirs.receipt.task_id, 0)
    assert slash["correct_output"] != theirs.receipt.output_hash


def test_a_wrong_checker_without_a_verified_receipt_is_barred_not_slashed(grid: Grid) -> None:
    x = torch.rand(3, 4)
    grid.rerun_answer = grid.answer(x, -0.5)
    grid.rerun_receipted = False
    asyncio.run(grid.serve(grid.batch(1, x, grid.answer(x))))
    assert grid.checks.counts(EP) == (1, 1)
    assert grid.caught == [(CHECKER, CHECKER_REASON)]
    assert grid.reputation(NODE) == (1, 0) and grid.reputation(CHECKER) == (0, 1)
    with grid.state.engine.connect() as conn:
        assert slashing.slashes(conn) == []


def test_a_rerun_is_never_drawn_for_a_check(grid: Grid) -> None:
    x = torch.rand(2, 4)
    rerun = grid.batch(1, x, grid.answer(x, 0.5))  # wrong: a check would catch it
    marked = ServedBatch(EP, R1, NODE, "cpu", 1, rerun.receipt, (replace(rerun.requests[0], rerun=True),))
    asyncio.run(grid.serve(marked))
    assert grid.checks.counts(EP) == (0, 0) and grid.caught == [] and grid.refereed == 0
    assert marked.answered == 0 and credit_rows(grid.state) == []  # nor paid


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


def test_a_check_never_runs_its_transactions_on_the_event_loop(grid: Grid) -> None:
    # On SQLite, Runtime.db runs a transaction inline: the loop answering calls would wait for
    # every check's reads and writes. A check is on no caller's path: the database thread runs them.
    x = torch.rand(2, 4)
    threads: dict[str, int] = {}
    for name in ("_read_facts", "_record_verified", "_record_caught"):
        real = getattr(grid.checks, name)

        def recorded(*args: object, _name: str = name, _real: Any = real) -> object:
            threads[_name] = threading.get_ident()
            return _real(*args)

        setattr(grid.checks, name, recorded)

    async def scenario() -> int:
        grid.rerun_answer = grid.answer(x)  # agreed, neither node trusted: the referee confirms
        await grid.serve(grid.batch(1, x, grid.answer(x)))
        await grid.serve(grid.batch(2, x, grid.answer(x, 0.5)))  # and a wrong one is caught
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert grid.checks.counts(EP) == (2, 1)
    assert set(threads) == {"_read_facts", "_record_verified", "_record_caught"}
    assert loop_thread not in threads.values()


def _count_reads(grid: Grid) -> list[tuple[str, str, str]]:
    reads: list[tuple[str, str, str]] = []
    real = grid.checks._read_facts

    def counted(endpoint_id: str, subject: str, checker: str) -> tuple[str, list[str]]:
        reads.append((endpoint_id, subject, checker))
        return real(endpoint_id, subject, checker)

    grid.checks._read_facts = counted  # type: ignore[method-assign]
    return reads


def test_an_untrusted_pair_is_looked_up_once(grid: Grid) -> None:
    # A check's transactions take CPU the coordinator's calls wait for: an untrusted verdict is
    # remembered (trust grows only by verified checks: the referee merely confirms a little longer).
    x = torch.rand(2, 4)
    reads = _count_reads(grid)
    grid.rerun_answer = grid.answer(x)

    async def scenario() -> None:
        for n in (1, 2, 3):
            await grid.serve(grid.batch(n, x, grid.answer(x)))

    asyncio.run(scenario())
    assert reads == [(EP, NODE, CHECKER)]
    assert grid.checks.counts(EP) == (3, 0) and grid.refereed >= 3  # each agreement confirmed


def test_a_trusted_pair_is_looked_up_every_time(grid: Grid) -> None:
    # Never remembered: a trusted node may have been caught since, and its agreement would
    # then verify it without the referee.
    x = torch.rand(2, 4)
    reads = _count_reads(grid)
    grid.trust(NODE, CHECKER)
    grid.rerun_answer = grid.answer(x)

    async def scenario() -> None:
        for n in (1, 2):
            await grid.serve(grid.batch(n, x, grid.answer(x)))

    asyncio.run(scenario())
    assert len(reads) == 2 and grid.refereed == 0 and grid.checks.counts(EP) == (2, 0)


def test_verified_verdicts_are_written_together_and_when_the_checks_stop(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One transaction a second, not one a check: each is CPU the calls answered meanwhile wait for.
    monkeypatch.setattr(checks_module, "VERIFIED_FLUSH_S", 3600.0)  # only the stop writes here
    x = torch.rand(2, 4)
    writes: list[int] = []
    real = grid.checks._record_verified

    def counted(verdicts: list[tuple[list[str], str]]) -> None:
        writes.append(len(verdicts))
        real(verdicts)

    grid.checks._record_verified = counted  # type: ignore[method-assign]
    grid.rerun_answer = None  # the referee alone: it verifies the node

    async def scenario() -> None:
        stop = asyncio.Event()
        writer = asyncio.create_task(grid.checks.run(stop))
        for n in (1, 2, 3):
            grid.checks.after_batch(grid.batch(n, x, grid.answer(x)), grid.spec)
        while grid.checks._waiting:
            await asyncio.sleep(0.05)
        assert writes == [] and grid.reputation(NODE) == (0, 0)  # decided, not written yet
        stop.set()
        await writer

    asyncio.run(scenario())
    assert writes == [3] and grid.reputation(NODE) == (3, 0)
