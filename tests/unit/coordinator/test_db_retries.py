"""A transaction PostgreSQL rolled back for a deadlock or a serialization conflict runs again;
any other database error is raised at once."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from coordinator.services.runtime import DB_ATTEMPTS, with_retries


class _Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _flaky(failures: int, sqlstate: str) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if len(calls) <= failures:
            raise OperationalError("UPDATE nodes ...", {}, _Orig(sqlstate))
        return x * 2

    return calls, fn


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])
def test_a_deadlocked_transaction_runs_again(sqlstate: str) -> None:
    calls, fn = _flaky(2, sqlstate)
    assert with_retries(fn, 21) == 42  # type: ignore[arg-type]
    assert calls == [21, 21, 21]


def test_retries_end_and_the_error_is_raised() -> None:
    calls, fn = _flaky(DB_ATTEMPTS, "40P01")
    with pytest.raises(OperationalError):
        with_retries(fn, 1)  # type: ignore[arg-type]
    assert len(calls) == DB_ATTEMPTS


def test_other_database_errors_are_not_retried() -> None:
    calls, fn = _flaky(1, "23505")  # unique_violation: running it again cannot help
    with pytest.raises(OperationalError):
        with_retries(fn, 1)  # type: ignore[arg-type]
    assert calls == [1]


def test_a_deadlock_raised_by_the_driver_itself_runs_again() -> None:
    """coordinator.db.rawsql executes on the driver's cursor: its errors arrive unwrapped."""
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise _Orig("40P01")
        return x * 2

    assert with_retries(fn, 21) == 42
    assert calls == [21, 21]
