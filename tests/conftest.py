"""Shared fixtures: databases (SQLite file and a fresh PostgreSQL database), temp dirs, and
files built once per run for every pytest-xdist worker (`shared_dir`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

PG_ADMIN_URL = os.environ.get("TENSORGRID_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# Before any conftest imports torch (whose OpenMP runtime reads it once, when loaded), and
# inherited by xdist workers, grids and sandboxed children (tensorgrid/sandbox/policy.py passes
# it on): idle OpenMP threads sleep rather than spin. The suite runs more busy processes than
# cores, and spinning threads burn CPU the others need (a torch test file measured 25% less CPU).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Sandboxed entries the tests run besides the grid's own: the session's zygote forks them too.
TEST_ENTRIES = (
    "tests.security.sandbox_payload",
    "tests.security.torch_payload",
    "tests.security.prepare_payload",
    "tests.security.slow_start_payload",
    "tests.security.prying_worker",
)


@pytest.fixture(scope="session", autouse=True)
def sandbox_zygote() -> Iterator[str]:
    """One zygote (tensorgrid.sandbox.zygote) for this test process (each xdist worker its own),
    started before any grid: its socket is exported, so every coordinator, node and executor the
    tests start forks its sandboxed children from it rather than importing torch in each. Not
    waited for: children are exec'd until it is warm. TENSORGRID_SANDBOX_ZYGOTE set by the caller
    wins (`off`: the whole suite execs every child)."""
    import tempfile

    from tensorgrid.sandbox import launch

    launch.allow_in_own_zygote(TEST_ENTRIES)  # where a test asks for a process's own zygote
    given = os.environ.get(launch.ZYGOTE_ENV)
    if given:
        yield given
        return
    where = Path(tempfile.mkdtemp(prefix="tg-zygote-"))
    path = where / "sock"
    proc = launch.start_zygote(path, allow=TEST_ENTRIES, owner=os.getpid(), own_dir=True)  # a killed run too
    os.environ[launch.ZYGOTE_ENV] = str(path)
    launch.reset()
    try:
        yield str(path)
    finally:
        os.environ.pop(launch.ZYGOTE_ENV, None)
        launch.reset()
        proc.kill()
        proc.wait()
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(params=["exec", "zygote"])
def sandbox_start(
    request: pytest.FixtureRequest, sandbox_zygote: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Run the test once with every sandboxed child exec'd and once with each forked by the
    session's zygote; fails if a child started the other way (a silent fallback)."""
    from tensorgrid.sandbox import launch

    if request.param == "zygote":
        if sandbox_zygote.lower() in launch.OFF:
            pytest.skip("TENSORGRID_SANDBOX_ZYGOTE is off for this run")
        assert launch.wait_ready(sandbox_zygote, 120), "the session's zygote never answered"
        monkeypatch.setenv(launch.ZYGOTE_ENV, sandbox_zygote)
    else:
        monkeypatch.setenv(launch.ZYGOTE_ENV, "off")
    launch.reset()
    before = dict(launch.started)
    yield str(request.param)
    forked, execd = (launch.started[k] - before[k] for k in ("forked", "execd"))
    monkeypatch.undo()
    launch.reset()
    if request.param == "zygote":
        assert forked > 0 and execd == 0, f"children forked {forked}, exec'd {execd}: not all by the zygote"
    else:
        assert forked == 0, f"{forked} children forked with the zygote off"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the PostgreSQL server; fails loudly if it is not there."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is needed (set TENSORGRID_TEST_PG): {e}")
    return PG_ADMIN_URL


@contextlib.contextmanager
def fresh_database(server: str, template: str | None = None) -> Iterator[str]:
    """A fresh PostgreSQL database on `server` (empty, or a copy of `template`), dropped when the
    block ends."""
    import psycopg

    name = f"tg_test_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    base = server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture(scope="module")
def pg_module_url(pg_server: str) -> Iterator[str]:
    """One fresh PostgreSQL database for a module's tests (e.g. behind a module-scoped grid)."""
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture(scope="session")
def pg_schema_template(pg_server: str) -> Iterator[str]:
    """A database brought to this code's schema once per worker: the name of a template that
    `migrated_pg_url` copies (a copy takes a fraction of a second; building the schema in each
    test's own database took seconds of DDL)."""
    from coordinator.db.engine import make_engine

    with fresh_database(pg_server) as url:
        make_engine(url).dispose()  # upgraded to head, then no session may stay on a template
        yield url.rsplit("/", 1)[1]


@pytest.fixture
def migrated_pg_url(pg_server: str, pg_schema_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database at this code's schema, for one test, dropped afterwards."""
    with fresh_database(pg_server, template=pg_schema_template) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """Each test using this runs once on a new SQLite file and once on a new PostgreSQL database
    at this code's schema (tests of the schema's own making start from `empty_db_url`)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("migrated_pg_url"))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """As db_url, but the PostgreSQL database is empty: no schema yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_url"))


def shared_dir(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A directory that `build` fills once per test run, however many xdist workers ask.

    Workers of one run share the parent of their base temp dirs; the first to take the lock
    builds, the others wait and reuse. A build that raised leaves no `.done` marker, so the
    next worker tries afresh (and fails the same way, loudly). Without xdist the session's
    own base temp dir is used: never a directory another pytest run could share.
    """
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path, done = root / f"shared-{name}", root / f"shared-{name}" / ".done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="module", autouse=True)
def _no_sandboxed_child_outlives_its_module() -> Iterator[None]:
    """A coordinator's referee child started in this process (an in-process Coordinator or
    Runtime) must be gone once the module that started it is done: one left running is CPU and
    memory for the rest of the run, and tests that count this process's children (which
    children a coordinator starts, and when) would see it. Killed here, and the module fails."""
    from tests.procs import REFEREE_ENTRY, running  # imports the coordinator: only when asked

    before = set(running(os.getpid(), REFEREE_ENTRY))
    yield
    left = set(running(os.getpid(), REFEREE_ENTRY)) - before
    for pid in left:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if left:
        pytest.fail(f"{len(left)} referee child(ren) outlived the module that started them: stop its runtime")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first: integration tests, then ones marked slow, then the rest, each in file order.

    pytest-xdist hands tests out in this order, so the minute-long ones start at once and the
    run ends with short ones filling the gaps, not with one worker finishing a long test alone.
    The order is the same in every worker, as xdist requires.
    """
    items.sort(
        key=lambda item: 0 if item.get_closest_marker("integration") else 1 if item.get_closest_marker("slow") else 2
    )
    if hasattr(config, "workerinput") and config.getvalue("loadgroup"):
        _name_groups(items)


def _name_groups(items: list[pytest.Item]) -> None:
    """`--dist loadgroup` sends the tests of one `xdist_group` to one worker (so they share its
    module grid) by the "@group" suffix of their node ids. pytest-xdist 3.8 writes that suffix
    to `item._nodeid`, which pytest 9 no longer reads (a node's id lives in `item._id`): left so,
    the mark does nothing. Here the id gets its suffix where pytest reads it; a pytest that
    keeps ids elsewhere again fails here, loudly, rather than quietly spreading the group."""
    for item in items:
        names = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")
        }
        if not names or "@" in item.nodeid:
            continue
        grouped = f"{item.nodeid}@{'_'.join(sorted(names))}"
        item._id = type(item._id).parse(grouped)  # type: ignore[attr-defined]
        if item.nodeid != grouped:
            raise pytest.UsageError(f"cannot group {item.nodeid} for --dist loadgroup: pytest keeps node ids elsewhere")
