"""Writes the dumps of a database made by the release before migrations (0.1.0), with rows.

Run with that release's code first on the path (its make_engine creates the schema with create_all):
    mkdir /tmp/old && git archive 841ef2d coordinator tensorgrid | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old .venv/bin/python <this file> <dir to write to>
The dumps are committed beside this file; the upgrade tests load them (test_migrations.py).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
from sqlalchemy import text

from coordinator.db.engine import make_engine

NODE = "0x" + "ab" * 20
JOB = "cd" * 32
ROWS = [
    "INSERT INTO meta (key, value) VALUES ('epoch_interval_ms', '30000')",
    "INSERT INTO nodes (address, capabilities, device_kind, memory_bytes, registered_ms, last_seen_ms, draining,"
    " completed, failures, rejections, consecutive_failures, backoff_until_ms)"
    f" VALUES ('{NODE}', '{{\"device\": \"cpu\"}}', 'cpu', 8589934592, 1000, 2000, false, 7, 1, 0, 0, 0)",
    "INSERT INTO jobs (job_id, submitter, kind, state, spec_json, spec_hash, created_ms, updated_ms, tasks_total,"
    " tasks_done, task_failures, result_sha, result_size, error, event_seq)"
    f" VALUES ('{JOB}', '{NODE}', 'inference', 'done', X'7b7d', '{'ef' * 32}', 1000, 3000, 2, 2, 0, NULL, NULL, '', 4)",
    "INSERT INTO job_prices (job_id, reward_per_task_wei, budget_wei, credited_wei, void_reason)"
    f" VALUES ('{JOB}', '1000000000000000000000000000000', '{2**200}', '{2**255 + 7}', '')",
    "INSERT INTO credits (node, job_id, task_id, attempt, amount_wei, created_ms, epoch, void)"
    f" VALUES ('{NODE}', '{JOB}', '{'01' * 32}', 1, '{2**255 + 7}', 2500, NULL, false)",
]


def fill(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for row in ROWS:
            conn.execute(text(row.replace("X'7b7d'", "'\\x7b7d'::bytea") if "postgresql" in url else row))
    engine.dispose()


def main(out: Path) -> None:
    import coordinator.db.engine

    print(f"schema made by {coordinator.db.engine.__file__}")
    db = out / "scratch.db"
    fill(f"sqlite:///{db}")
    dump = subprocess.run(["sqlite3", str(db), ".dump"], check=True, capture_output=True, text=True).stdout
    (out / "v0.1.0.sqlite.sql").write_text(dump)
    db.unlink()
    admin = "postgresql://postgres@127.0.0.1:5432/test"
    name = f"tg_legacy_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        fill(url)
        args = ["pg_dump", "--no-owner", "--no-privileges", "--no-comments", "--inserts", url]
        dump = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        # plain SQL only: newer pg_dump brackets its output in psql's \restrict meta-commands
        plain = "".join(line for line in dump.splitlines(keepends=True) if not line.startswith("\\"))
        (out / "v0.1.0.postgresql.sql").write_text(plain)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main(Path(sys.argv[1]))
