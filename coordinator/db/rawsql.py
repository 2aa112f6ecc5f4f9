"""Hot-path statements run straight through the DB-API cursor.

Leasing and accepting a result run a handful of small statements per task. For such a
statement SQLAlchemy's execute (cache key, parameter and result processing, result
objects) costs several times what SQLite or PostgreSQL spend running it: measured under
`python -m benchmarks.dispatch`, it was the biggest item of the coordinator's own work.
The statements stay SQLAlchemy expressions (one definition for both dialects); each is
compiled once per dialect and then executed with the driver's cursor on the caller's
connection, inside the caller's transaction. Bind and result type processing is kept.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Plan:
    sql: str
    positional: bool
    names: tuple[str, ...]  # bind names, in the order of a positional driver's placeholders
    defaults: dict[str, Any]  # literal values the expression carries (e.g. state == 'leased')
    binds: tuple[tuple[str, Any], ...]  # (name, processor) for binds whose type converts values
    row_type: Any  # a namedtuple of the returned columns, or None
    types: tuple[Any, ...]  # the returned columns' types (their processors need the driver's type codes)


class Raw:
    """One prebuilt statement; `all`, `first`, `run` and `many` take the caller's Connection."""

    def __init__(self, stmt: ClauseElement) -> None:
        self.stmt = stmt
        self._plans: dict[str, _Plan] = {}
        # Per dialect: one result processor per returned column (None when none needs one). Made
        # from the first cursor's description: a driver's processor may depend on the column's
        # type code there (psycopg's NUMERIC), which compiling alone does not tell.
        self._results: dict[str, tuple[Processor, ...] | None] = {}

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._plans[dialect.name] = _compile(self.stmt, dialect)
        return plan

    def _params(self, plan: _Plan, params: Mapping[str, Any]) -> Any:
        values = {**plan.defaults, **params}
        for name, proc in plan.binds:
            values[name] = proc(values[name])
        return tuple(values[n] for n in plan.names) if plan.positional else values

    def _cursor(self, conn: Connection, params: Mapping[str, Any]) -> tuple[_Plan, Any]:
        plan = self._plan(conn.dialect)
        cursor = conn.connection.cursor()
        cursor.execute(plan.sql, self._params(plan, params))
        return plan, cursor

    def _processors(self, dialect: Dialect, plan: _Plan, cursor: Any) -> tuple[Processor, ...] | None:
        try:
            return self._results[dialect.name]
        except KeyError:
            pass
        codes = [d[1] for d in cursor.description or ()]
        procs = tuple(t._cached_result_processor(dialect, code) for t, code in zip(plan.types, codes, strict=True))
        found = self._results[dialect.name] = procs if any(procs) else None
        return found

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        plan, cursor = self._cursor(conn, params)
        try:
            procs = self._processors(conn.dialect, plan, cursor)
            return [_row(plan, procs, r) for r in cursor.fetchall()]
        finally:
            cursor.close()

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        plan, cursor = self._cursor(conn, params)
        try:
            r = cursor.fetchone()
            return None if r is None else _row(plan, self._processors(conn.dialect, plan, cursor), r)
        finally:
            cursor.close()

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Execute a statement that returns no rows; returns the row count."""
        _, cursor = self._cursor(conn, params)
        count = int(cursor.rowcount)
        cursor.close()
        return count

    def many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """executemany: one call for many parameter sets (no rows returned)."""
        plan = self._plan(conn.dialect)
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(plan.sql, [self._params(plan, p) for p in rows])
        finally:
            cursor.close()


def _row(plan: _Plan, procs: tuple[Processor, ...] | None, r: Sequence[Any]) -> Any:
    if procs is not None:
        r = [v if p is None else p(v) for p, v in zip(procs, r, strict=True)]
    return plan.row_type._make(r)


def _compile(stmt: ClauseElement, dialect: Dialect) -> _Plan:
    compiled = stmt.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    binds: list[tuple[str, Any]] = []
    defaults: dict[str, Any] = {}
    for bp, name in compiled.bind_names.items():
        if bp.expanding:
            raise ValueError(f"{name}: expanding IN parameters are not supported on the raw path")
        if not bp.required:
            defaults[name] = bp.effective_value
        proc = bp.type._cached_bind_processor(dialect)
        if proc is not None:
            binds.append((name, proc))
    columns = list(getattr(stmt, "exported_columns", ()))
    row_type = namedtuple("Row", [c.key for c in columns], rename=True) if columns else None  # type: ignore[misc]
    positional = bool(dialect.positional)
    names = tuple(compiled.positiontup or ()) if positional else ()
    return _Plan(compiled.string, positional, names, defaults, tuple(binds), row_type, tuple(c.type for c in columns))


class RawInsert(Raw):
    """A multi-row INSERT of the named columns; `many` takes rows keyed by column name."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        # Binds need names of their own: a bind named like its column is reserved by SQLAlchemy.
        super().__init__(insert(table).values({c: bindparam(f"b_{c}") for c in columns}))
        self.columns = tuple(columns)

    def many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        super().many(conn, [{f"b_{c}": row[c] for c in self.columns} for row in rows])
