"""The statements one accepted no-op result costs SQLite, counted as SQLite runs them (its trace
callback, on a real database file), so that a change adding one to every task fails here rather
than only as a slower `python -m benchmarks.dispatch`.

The transaction is the one a busy node's SubmitSmallResult joins (services.acceptance,
accept_and_lease): the result accepted and its node's next lease granted in one group commit.
Measured: 11 statements for a batch of one result, 7 more for each further result of the batch
(the job's price and progress are read and written once per batch, BEGIN and COMMIT once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from coordinator.db import kept
from coordinator.repositories.store import Store
from tensorgrid.types import Lease
from tests.unit.coordinator.test_piggyback import TIMING, register, result, submit
from tests.unit.coordinator.test_storage import CPU, JOB, make_job

NODES = [f"0x{i:040x}" for i in range(1, 5)]
FIRST_RESULT = 11  # BEGIN … COMMIT around one accepted result and its node's next lease
NEXT_RESULT = 7  # each further result in the same batch: claim, receipt, node, event, and a lease (3)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'state.db'}")
    yield st
    st.close()


class Statements:
    """Every statement SQLite runs on the connections checked out after start()."""

    def __init__(self, state: Store) -> None:
        self.seen: list[str] = []
        kept.close(state.engine)  # the hot path's kept connection is checked out again, and traced
        event.listen(state.engine, "checkout", self._trace)

    def _trace(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.set_trace_callback(self.seen.append)

    def take(self) -> list[str]:
        out = list(self.seen)
        self.seen.clear()  # the callback appends to this very list
        return out


def leased(state: Store) -> dict[str, Lease]:
    out = {}
    for node in NODES:
        (lease,), _ = state.tasks.lease_tasks(node, 1, 10, TIMING)
        out[node] = lease
    return out


def accept(state: Store, held: dict[str, Lease], nodes: list[str], now: int) -> None:
    outcomes, leases = submit(state, [result(node, held[node], want=1) for node in nodes], now)
    assert outcomes == [(JOB, False)] * len(nodes)
    for node, answer in zip(nodes, leases, strict=True):
        assert isinstance(answer, tuple) and len(answer[0]) == 1, answer
        held[node] = answer[0][0]


def test_an_accepted_noop_result_costs_a_bounded_number_of_statements(state: Store) -> None:
    register(state, *((n, CPU) for n in NODES))
    make_job(state, n=40)
    held = leased(state)
    accept(state, held, NODES, 200)  # warm: the job is seen started, every statement compiled
    statements = Statements(state)

    accept(state, held, NODES[:1], 300)
    one = statements.take()
    assert one[0] == "BEGIN IMMEDIATE" and one[-1] == "COMMIT", one
    assert len(one) <= FIRST_RESULT, "\n".join(one)

    accept(state, held, NODES, 400)
    four = statements.take()
    assert len(four) <= FIRST_RESULT + 3 * NEXT_RESULT, "\n".join(four)
