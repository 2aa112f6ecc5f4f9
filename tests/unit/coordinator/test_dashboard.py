"""The dashboard's HTTP API on a real port over a real database: dashboard sessions (a full
submitter session's token is refused), other submitters' jobs answered 404, the job report
(verification, settlement, rounds), the public node list, and the guards (GET only, security
headers, no CORS, no path outside the bundle, limits)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.api.dashboard import DashboardLimits, Views, open_dashboard
from coordinator.api.server import make_sessions
from coordinator.api.sessions import token_hash
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.db import schema as s
from coordinator.repositories.ledger import escrow
from coordinator.services.dashboard import DashboardData
from tensorgrid.crypto import Signer
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.types import Capabilities

ALICE, BOB, OPERATOR = (Signer.generate().address for _ in range(3))
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'
Scenario = Callable[[Coordinator, str], Awaitable[None]]


def make_job(app: Coordinator, submitter: str, tasks: int, spec_json: bytes | None = None) -> str:
    raw = canonical_json(NoopSpec(tasks=tasks))
    sh = spec_hash(raw)
    job_id = job_id_for(submitter, sh)
    job, planned = app.intake.plan(raw, submitter, sh, job_id)
    if spec_json is not None:  # what a submitter wrote, stored as it came
        job = dataclasses.replace(job, spec_json=spec_json)
    app.store.jobs.create_job(job, planned, app.runtime.now_ms())
    return job_id


def session(app: Coordinator, address: str, kind: str = "dashboard") -> str:
    """A session's token, as OpenSession stores it: a dashboard link's by default."""
    token = secrets.token_urlsafe(32)
    now = app.runtime.now_ms()
    app.store.sessions.open_session(address, token_hash(token), secrets.token_hex(20), now, 60_000, 32, kind)
    return token


def run(db_url: str, tmp_path: Path, scenario: Scenario, limits: DashboardLimits | None = None) -> None:
    config = CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url, operator_address=OPERATOR)
    app = Coordinator(config)

    async def main() -> None:
        sessions = make_sessions(app)
        data = DashboardData(app.store, app.reports, lambda node: 5 * 10**18)
        views = Views(app.runtime, app.access, data, sessions.dashboards, sessions.limiter)
        dashboard = await open_dashboard("127.0.0.1:0", views, limits=limits or DashboardLimits())
        try:
            await scenario(app, f"http://127.0.0.1:{dashboard.port}")
        finally:
            await dashboard.stop()
            await app.stop()

    asyncio.run(main())


async def get(base: str, path: str, token: str = "", headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    async with aiohttp.ClientSession() as http, http.get(base + path, headers=headers) as r:
        body = await r.read()
        is_json = r.content_type == "application/json"
        return r.status, json.loads(body) if is_json else body, r.headers


def test_each_submitter_sees_its_own_jobs_and_another_ones_is_not_found(db_url: str, tmp_path: Path) -> None:
    async def scenario(app: Coordinator, base: str) -> None:
        mine = make_job(app, ALICE, 3, json.dumps({"kind": "noop", "tasks": 3, "note": HOSTILE}).encode())
        theirs = make_job(app, BOB, 2)
        alice, bob, operator = session(app, ALICE), session(app, BOB), session(app, OPERATOR)

        status, body, headers = await get(base, "/api/jobs", alice)
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert [j["job_id"] for j in body["jobs"]] == [mine]
        assert body["jobs"][0]["state"] == "queued" and body["jobs"][0]["tasks_total"] == 3
        status, body, _ = await get(base, f"/api/jobs/{mine}", alice)
        assert status == 200 and body["spec"]["note"] == HOSTILE  # data, as written: the page shows it as text
        assert body["verification"]["summary"].startswith("verification: ")
        assert body["settlement"] == {"priced": False, "chain": []} and body["rounds"] == []

        for job_id in (theirs, "ab" * 32, "../../etc/passwd", "x" * 300):
            status, body, _ = await get(base, f"/api/jobs/{job_id}", alice)
            assert status == 404, (job_id, status)
        status, absent, _ = await get(base, f"/api/jobs/{'ab' * 32}", alice)
        status, other, _ = await get(base, f"/api/jobs/{theirs}", alice)
        assert other["error"].replace(theirs, "ID") == absent["error"].replace("ab" * 32, "ID")  # same words

        _, body, _ = await get(base, "/api/jobs", bob)
        assert [j["job_id"] for j in body["jobs"]] == [theirs]
        _, body, _ = await get(base, "/api/jobs", operator)  # the operator sees every job, as over gRPC
        assert {j["job_id"] for j in body["jobs"]} == {mine, theirs}
        _, me, _ = await get(base, "/api/me", operator)
        assert me == {"address": OPERATOR, "operator": True}

    run(db_url, tmp_path, scenario)


def test_no_token_a_bad_one_or_too_many_failures_are_refused(db_url: str, tmp_path: Path) -> None:
    async def scenario(app: Coordinator, base: str) -> None:
        make_job(app, ALICE, 1)
        for path in ("/api/jobs", "/api/me", f"/api/jobs/{'ab' * 32}"):
            status, body, headers = await get(base, path)
            assert status == 401 and "tensorgrid dashboard" in body["error"] and headers["WWW-Authenticate"] == "Bearer"
        status, body, _ = await get(base, "/api/jobs", "made-up")
        assert status == 401 and "unknown or expired" in body["error"]
        expired = secrets.token_urlsafe(32)
        then = app.runtime.now_ms() - 120_000
        app.store.sessions.open_session(
            ALICE, token_hash(expired), secrets.token_hex(20), then, 60_000, 32, "dashboard"
        )
        assert (await get(base, "/api/jobs", expired))[0] == 401
        # a full (SDK) session's token opens no dashboard: only a dashboard link's does
        full = session(app, ALICE, "submitter")
        status, body, _ = await get(base, "/api/me", full)
        assert status == 401 and "no dashboard link's" in body["error"]
        assert (await get(base, "/api/me", session(app, ALICE)))[0] == 200
        # the token only ever counts in the Authorization header, never in the URL
        assert (await get(base, f"/api/jobs?token={session(app, ALICE)}"))[0] == 401
        for _ in range(40):  # the gRPC limiter's budget (30 a minute per host), shared
            status, _, headers = await get(base, "/api/jobs", "guess")
        assert status == 429 and int(headers["Retry-After"]) > 0
        assert (await get(base, "/api/jobs", session(app, ALICE)))[0] == 429  # until the window passes

    run(db_url, tmp_path, scenario)


def test_a_priced_job_shows_its_escrow_chain_writes_and_rounds(db_url: str, tmp_path: Path) -> None:
    async def scenario(app: Coordinator, base: str) -> None:
        job_id = make_job(app, ALICE, 2)
        app.ledger.set_job_price(job_id, 10**15, 3 * 10**15)
        now = app.runtime.now_ms()
        with app.store.engine.begin() as conn:
            escrow.lock_job(conn, job_id, now)
            for n, (loss, acc) in enumerate(((2.1, 0.31), (1.2, 0.74))):
                conn.execute(
                    s.training_rounds.insert().values(
                        job_id=job_id,
                        round_no=n,
                        closed_ms=now,
                        workers=2,
                        slots="[0, 1]",
                        rows=100,
                        train_loss=loss + 0.1,
                        eval_loss=loss,
                        eval_accuracy=acc,
                        bytes_up=1000,
                        weights_sha="0" * 64,
                        weights_size=1,
                        momentum_sha="0" * 64,
                        momentum_size=1,
                    )  # fmt: skip
                )
        _, body, _ = await get(base, f"/api/jobs/{job_id}", session(app, ALICE))
        settlement = body["settlement"]
        assert settlement["priced"] is True
        assert (settlement["budget_wei"], settlement["reward_per_task_wei"]) == (str(3 * 10**15), str(10**15))
        assert (settlement["charged_wei"], settlement["refunded_wei"]) == ("0", None)
        assert [(w["action"], w["state"]) for w in settlement["chain"]] == [("lock_job", "pending")]
        assert [(r["round"], r["eval_loss"], r["eval_accuracy"]) for r in body["rounds"]] == [
            (0, 2.1, 0.31),
            (1, 1.2, 0.74),
        ]

    run(db_url, tmp_path, scenario)


def test_nodes_are_public_with_record_stake_and_earnings(db_url: str, tmp_path: Path) -> None:
    async def scenario(app: Coordinator, base: str) -> None:
        node = Signer.generate().address
        cpu = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
        app.store.nodes.register_node(node, cpu, "00" * 32, app.runtime.now_ms(), 10**9, "n0")
        status, body, _ = await get(base, "/api/nodes")
        assert status == 200
        (row,) = body["nodes"]
        assert row["address"] == node and row["stake_wei"] == str(5 * 10**18) and row["earned_wei"] == "0"
        assert {"verified", "caught", "consecutive_valid", "last_seen_ms", "slashed_wei"} <= set(row)

    run(db_url, tmp_path, scenario)


async def raw_request(base: str, request: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await reader.read(65536)
    writer.close()
    return data


def test_guards_headers_methods_static_files_and_limits(tmp_path: Path) -> None:
    async def scenario(app: Coordinator, base: str) -> None:
        status, page, headers = await get(base, "/")
        assert status == 200 and b'<script src="/app.js" defer></script>' in page and b"<script>" not in page
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
        assert "Access-Control-Allow-Origin" not in headers
        status, script, headers = await get(base, "/app.js", headers={"Origin": "https://evil.example"})
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert "Access-Control-Allow-Origin" not in headers
        for sink in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write", b"eval(", b"Function("):
            assert sink not in script, sink  # every value goes in as text
        assert (await get(base, "/api/nodes", headers={"Origin": "https://evil.example"}))[2].get(
            "Access-Control-Allow-Origin"
        ) is None

        async with aiohttp.ClientSession() as http:
            for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
                async with http.request(method, base + "/api/jobs") as r:
                    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD", method
                    assert r.headers["X-Content-Type-Options"] == "nosniff"

        for path in (b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/app.js/../../../etc/passwd",
                     b"/static/..%2f..%2f__init__.py", b"/index.html", b"/server.py"):  # fmt: skip
            answer = await raw_request(base, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 404"), (path, answer[:80])
            assert b"root:" not in answer and b"import" not in answer

        long_line = b"GET /api/jobs?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await raw_request(base, long_line)).split(b" ")[1] == b"400"
        many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(40)) + b"\r\n"
        assert (await raw_request(base, many)).split(b" ")[1] == b"400"

    run(f"sqlite:///{tmp_path / 'state.db'}", tmp_path, scenario)


def test_api_calls_beyond_the_limit_are_turned_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_jobs(self: DashboardData, submitter: str, limit: int) -> list[dict[str, Any]]:
        time.sleep(0.5)  # a long scan, holding a database thread
        return []

    monkeypatch.setattr(DashboardData, "jobs", slow_jobs)

    async def scenario(app: Coordinator, base: str) -> None:
        token = session(app, ALICE)
        answers = await asyncio.gather(*(get(base, "/api/jobs", token) for _ in range(4)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200, 503, 503, 503], statuses
        assert all(h["Retry-After"] == "1" for status, _, h in answers if status == 503)

    run(f"sqlite:///{tmp_path / 'state.db'}", tmp_path, scenario, DashboardLimits(api_calls=1))


@pytest.mark.parametrize(
    ("coordinator", "url", "want"),
    [
        ("127.0.0.1:7070", "", "http://127.0.0.1:7080/"),
        ("grid.example.org:7070", "", "https://grid.example.org:7080/"),
        ("x:1", "https://dash.example.org/tg", "https://dash.example.org/tg/"),
    ],
)
def test_the_cli_link_points_at_the_dashboard(coordinator: str, url: str, want: str) -> None:
    import argparse

    from tensorgrid.cli_dashboard import dashboard_url

    assert dashboard_url(argparse.Namespace(coordinator=coordinator, url=url)) == want
