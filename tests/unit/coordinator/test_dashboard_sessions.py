"""Dashboard sessions (scope "dashboard") against the coordinator's real gRPC server and dashboard,
sharing one set of session caches as the daemon does: a dashboard token is worth nothing over
gRPC (every call that needs a session answers UNAUTHENTICATED), a full token opens no dashboard,
a signature opens only the scope it names, and a dashboard session lives 8 h by default. The
repository's side (own table, cap, expiry, replicas) is in test_sessions.py and test_replicas.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from coordinator.api import auth
from coordinator.api.dashboard import Views, open_dashboard
from coordinator.api.server import build_server, make_sessions
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig, SessionLimits
from coordinator.services.dashboard import DashboardData
from tensorgrid.crypto import DASHBOARD_SCOPE, FULL_SCOPE, Signer, session_message, sign_message
from tensorgrid.errors import SignatureError
from tensorgrid.rpc import SESSION_METADATA_KEY
from tensorgrid.v1 import node_pb2, submit_pb2, submit_pb2_grpc
from tests.unit.coordinator.test_dashboard import get

HOUR_MS = 3_600_000
Stub = submit_pb2_grpc.SubmitterServiceStub
Scenario = Callable[[Stub, grpc.aio.Channel, str], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario) -> None:
    """The scenario with a stub and a channel to the gRPC server, and the dashboard's base URL."""
    # failed authentications count per host (every call here comes from 127.0.0.1): room for all
    limits = SessionLimits(failures_per_window=10_000)
    config = CoordinatorConfig(
        data_dir=tmp_path / "coord", database_url=f"sqlite:///{tmp_path / 'c.db'}", sessions=limits
    )
    app = Coordinator(config)

    async def main() -> None:
        sessions = make_sessions(app)
        server, port, _ = await build_server(app, "127.0.0.1:0", None, None, sessions)
        await server.start()
        views = Views(
            app.runtime, app.access, DashboardData(app.store, app.reports), sessions.dashboards, sessions.limiter
        )
        dashboard = await open_dashboard("127.0.0.1:0", views)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(Stub(channel), channel, f"http://127.0.0.1:{dashboard.port}")
        finally:
            await dashboard.stop()
            await server.stop(0)
            await app.stop()

    asyncio.run(main())


async def open_session(stub: Stub, signer: Signer, scope: str, signed_scope: str | None = None) -> submit_pb2.Session:
    """GetChallenge, sign the session message of `signed_scope` (default: `scope`), OpenSession."""
    challenge = await stub.GetChallenge(submit_pb2.SessionChallengeRequest(address=signer.address))
    text = session_message(signer.address, challenge.nonce, scope if signed_scope is None else signed_scope)
    request = submit_pb2.OpenSessionRequest(
        address=signer.address, nonce=challenge.nonce, signature=sign_message(signer, text), scope=scope
    )
    return await stub.OpenSession(request)


async def code_of(
    channel: grpc.aio.Channel, service: Any, method: Any, token: str, refused: bool = False
) -> grpc.StatusCode:
    """The status of one call of `method` with an empty request and the token as its session.

    refused: the call is expected to be refused at its start; a client stream then sends nothing
    until it ends (grpc.aio may report a status that arrives while it writes as INTERNAL,
    grpc/grpc#36066: what the coordinator's go-ahead avoids for the clients' streams)."""
    request_type = message_factory.GetMessageClass(method.input_type)
    reply_type = message_factory.GetMessageClass(method.output_type)
    path = f"/{service.full_name}/{method.name}"
    codec = dict(request_serializer=request_type.SerializeToString, response_deserializer=reply_type.FromString)
    shape = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    ended = asyncio.Event()

    async def silent() -> AsyncIterator[Any]:
        await ended.wait()
        return
        yield

    request: Any = request_type()
    if method.client_streaming:
        request = silent() if refused else iter([request_type()])
    call = shape(path, **codec)(request, metadata=((SESSION_METADATA_KEY, token),), timeout=10)
    try:
        if method.server_streaming:  # read its answers: left unread, InferStream's one answer (an
            # error for the empty request) kept its status from coming until the deadline, 10 s
            with contextlib.suppress(grpc.aio.AioRpcError):  # a refusal: call.code() says which
                async for _ in call:
                    pass
        return await call.code()  # type: ignore[no-any-return]
    finally:
        ended.set()


def guarded_methods(pb: Any, name: str) -> list[tuple[Any, Any]]:
    """Every method of a service that needs a session: all but the public ones and the openers."""
    service = pb.DESCRIPTOR.services_by_name[name]
    return [(service, m) for m in service.methods if f"/{service.full_name}/{m.name}" not in auth.PUBLIC | auth.OPENERS]


def test_a_dashboard_token_is_refused_by_every_grpc_call_and_a_full_one_by_the_dashboard(tmp_path: Path) -> None:
    submitter = Signer.generate()

    async def scenario(stub: Stub, channel: grpc.aio.Channel, base: str) -> None:
        before = int(time.time() * 1000)
        dashboard = await open_session(stub, submitter, DASHBOARD_SCOPE)
        full = await open_session(stub, submitter, FULL_SCOPE)
        # 8 h by default (an SDK session: 24 h)
        assert 8 * HOUR_MS <= dashboard.expires_at_ms - before <= 8 * HOUR_MS + 60_000
        assert 24 * HOUR_MS <= full.expires_at_ms - before <= 24 * HOUR_MS + 60_000

        submitter_calls = guarded_methods(submit_pb2, "SubmitterService")
        names = {m.name for _, m in submitter_calls}
        assert {"SubmitJob", "UploadBlob", "OpenBulkUpload", "CancelJob", "DeleteEndpoint", "Infer"} <= names
        for service, method in submitter_calls:
            code = await code_of(channel, service, method, dashboard.session_token, refused=True)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method.name, code)
            # the same call with the full session gets past authentication (to whatever an empty request earns)
            assert await code_of(channel, service, method, full.session_token) != grpc.StatusCode.UNAUTHENTICATED
        for service, method in guarded_methods(node_pb2, "NodeService"):  # nor is it a node's session
            code = await code_of(channel, service, method, dashboard.session_token, refused=True)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method.name, code)

        status, me, _ = await get(base, "/api/me", dashboard.session_token)
        assert status == 200 and me == {"address": submitter.address, "operator": False}
        status, body, _ = await get(base, "/api/jobs", full.session_token)
        assert status == 401 and "dashboard link" in body["error"]

    run(tmp_path, scenario)


def test_a_signature_opens_only_the_scope_it_names(tmp_path: Path) -> None:
    submitter = Signer.generate()

    async def refused(coro: Awaitable[Any]) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await coro
        return e.value

    async def scenario(stub: Stub, channel: grpc.aio.Channel, base: str) -> None:
        # a full session's signature sent as a dashboard one, and the other way round
        e = await refused(open_session(stub, submitter, DASHBOARD_SCOPE, signed_scope=FULL_SCOPE))
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "session signed by" in (e.details() or "")
        e = await refused(open_session(stub, submitter, FULL_SCOPE, signed_scope=DASHBOARD_SCOPE))
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        # a scope the coordinator does not know is refused before any signature is checked
        challenge = await stub.GetChallenge(submit_pb2.SessionChallengeRequest(address=submitter.address))
        bogus = submit_pb2.OpenSessionRequest(
            address=submitter.address,
            nonce=challenge.nonce,
            signature=sign_message(submitter, session_message(submitter.address, challenge.nonce)),
            scope="admin",
        )
        e = await refused(stub.OpenSession(bogus))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "scope" in (e.details() or "")
        # a refused scope did not burn the nonce: the same signature opens the scope it was made for
        bogus.scope = FULL_SCOPE
        assert (await stub.OpenSession(bogus)).session_token

    run(tmp_path, scenario)


def test_the_full_scopes_message_is_the_one_before_scopes_and_the_dashboards_names_it() -> None:
    address, nonce = Signer.from_hex("11" * 32).address, bytes(range(40))
    before = f"TensorGrid submitter session\naddress: {address}\nnonce: {nonce.hex()}"
    assert session_message(address, nonce) == before.encode()  # docs/API.md, tests/js/client.mjs
    assert session_message(address, nonce, FULL_SCOPE) == before.encode()
    assert session_message(address, nonce, DASHBOARD_SCOPE) == (before + "\nscope: dashboard").encode()
    for scope in ("admin", "dashboard\nscope: ", "Dashboard"):
        with pytest.raises(SignatureError, match="unknown session scope"):
            session_message(address, nonce, scope)
