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
from operator import itemgetter
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
    pick: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # a positional driver's parameters, from the values


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
        # Several statements a task: most have neither literal values nor converting binds.
        if plan.defaults or plan.binds:
            values = {**plan.defaults, **params}
            for name, proc in plan.binds:
                values[name] = proc(values[name])
            params = values
        return plan.pick(params) if plan.positional else params

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
        _executemany(conn, plan.sql, [self._params(plan, p) for p in rows])


def _executemany(conn: Connection, sql: str, params: list[Any]) -> None:
    cursor = conn.connection.cursor()
    try:
        if len(params) == 1:
            # A lease's grant, a result's receipt: most calls carry one row. psycopg runs
            # executemany in pipeline mode, which for one row cost 2-3 times an execute (0.26
            # against 0.08-0.12 ms per statement on loopback).
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)
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
    types = tuple(c.type for c in columns)
    return _Plan(compiled.string, positional, names, defaults, tuple(binds), row_type, types, _picker(names))


def _picker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The values of `names`, in order, as a tuple (itemgetter answers a bare value for one name)."""
    if len(names) > 1:
        return itemgetter(*names)
    if names:
        (name,) = names
        return lambda values: (values[name],)
    return lambda values: ()


class RawInsert(Raw):
    """A multi-row INSERT of the named columns; `many` takes rows keyed by column name."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        # Binds need names of their own: a bind named like its column is reserved by SQLAlchemy.
        super().__init__(insert(table).values({c: bindparam(f"b_{c}") for c in columns}))
        self.columns = tuple(columns)
        self._pickers: dict[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]] = {}

    def many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        plan = self._plan(conn.dialect)
        if plan.positional and not plan.defaults:
            # The driver's parameters straight from the rows (no renamed dict per row): one per result.
            pick = self._pickers.get(conn.dialect.name)
            if pick is None:
                pick = self._pickers[conn.dialect.name] = _row_picker(plan)
            _executemany(conn, plan.sql, [pick(row) for row in rows])
            return
        super().many(conn, [{f"b_{c}": row[c] for c in self.columns} for row in rows])


def _row_picker(plan: _Plan) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A RawInsert row (keyed by column) as the positional parameters of `plan`, binds converted."""
    pick = _picker(tuple(n.removeprefix("b_") for n in plan.names))
    procs = dict(plan.binds)
    convert = tuple((i, procs[n]) for i, n in enumerate(plan.names) if n in procs)
    if not convert:
        return pick

    def params(row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = list(pick(row))
        for i, proc in convert:
            values[i] = proc(values[i])
        return tuple(values)

    return params
