"""`tensorgrid-coordinator db current / db upgrade`, and a real coordinator started on the previous
release's database: it upgrades it at start and serves, every row still there."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from coordinator.db import migrations
from tests.unit.coordinator.test_migrations import BIG_WEI, load_legacy


def coordinator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGRID_")}
    return subprocess.run(
        [sys.executable, "-m", "coordinator.main", *args],
        capture_output=True,
        text=True,
        env=clean | (env or {}),
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_db_current_and_upgrade_on_the_previous_releases_sqlite_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing = coordinator("db", "current", "--data-dir", str(data))
    assert missing.returncode == 1 and "no database" in missing.stdout and not data.exists()
    data.mkdir()
    load_legacy(f"sqlite:///{data / 'coordinator.db'}")
    old = coordinator("db", "current", "--data-dir", str(data))
    assert old.returncode == 0 and "made by a release before migrations" in old.stdout, old.stderr
    done = coordinator("db", "upgrade", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == f"now: revision {migrations.HEAD} (head: up to date)"
    now = coordinator("db", "current", "--data-dir", str(data))
    assert now.stdout.strip() == f"revision {migrations.HEAD} (head: up to date)"
    with sqlite3.connect(data / "coordinator.db") as conn:
        assert conn.execute("SELECT amount_wei FROM credits").fetchone() == (str(BIG_WEI),)


def test_db_commands_find_postgresql_through_the_config_file(tmp_path: Path, pg_url: str) -> None:
    load_legacy(pg_url)
    file = tmp_path / "c.toml"
    file.write_text(f'database_url = "{pg_url}"\n')
    env = {"TENSORGRID_COORDINATOR_CONFIG": str(file)}
    assert "made by a release before migrations" in coordinator("db", "current", env=env).stdout
    assert coordinator("db", "upgrade", env=env).returncode == 0
    assert coordinator("db", "current", env=env).stdout.strip() == f"revision {migrations.HEAD} (head: up to date)"
    unreachable = coordinator("db", "current", "--database-url", "postgresql://tg:s3cret@127.0.0.1:1/none")
    assert unreachable.returncode == 1 and "cannot reach the database" in unreachable.stderr
    assert "s3cret" not in unreachable.stderr and "Traceback" not in unreachable.stderr


def test_a_coordinator_starts_on_the_previous_releases_database(tmp_path: Path) -> None:
    data, ready = tmp_path / "data", tmp_path / "port"
    data.mkdir()
    load_legacy(f"sqlite:///{data / 'coordinator.db'}")
    args = ["run", "--listen", "127.0.0.1:0", "--data-dir", str(data), "--ready-file", str(ready), "--drain-s", "0"]
    args += ["--owner", str(os.getpid())]  # a killed run leaves it not running
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGRID_")}
    log = tmp_path / "coordinator.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "coordinator.main", *args], env=clean, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), f"the coordinator did not start: {proc.poll()}\n{log.read_text()}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:  # on two busy cores a coordinator stopped right after start may take 20 s to exit (0.1.0's too)
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "database schema upgraded: no revision" in log.read_text()
    assert f"-> revision {migrations.HEAD}" in log.read_text()
    with sqlite3.connect(data / "coordinator.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrations.HEAD,)]
        assert conn.execute("SELECT completed FROM nodes").fetchall() == [(7,)]
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
