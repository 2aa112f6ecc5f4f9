"""The dashboard's HTTP server: routes, the static bundle, security headers and request limits.
What each JSON endpoint answers is in views.py; the security model in this package's docstring."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aiohttp import web

from coordinator.api.dashboard.views import Views
from tensorgrid import tls

log = logging.getLogger("tensorgrid.coordinator")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# The whole bundle: URL path → (file in static/, content type). Nothing else is ever read.
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}


@dataclass(frozen=True)
class DashboardLimits:
    api_calls: int = 16  # API requests running at once (each holds a database thread); more: 503
    body_bytes: int = 1024  # GET takes no body
    max_line_size: int = 4096  # request line (path and query)
    max_field_size: int = 8190  # one header
    max_headers: int = 32
    keepalive_s: float = 15.0


def load_bundle() -> dict[str, tuple[bytes, str]]:
    """The static files, read once from the installed package (package data)."""
    root = resources.files("coordinator.api.dashboard") / "static"
    return {path: ((root / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}


def build_app(views: Views, limits: DashboardLimits = DashboardLimits()) -> web.Application:
    """The aiohttp application (not yet listening): for open_dashboard and the tests."""
    busy = asyncio.Semaphore(limits.api_calls)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            response: web.StreamResponse = _error(405, "the dashboard is read-only: GET only", Allow="GET, HEAD")
        elif request.path.startswith("/api/") and busy.locked():
            response = _error(503, "the dashboard is busy: try again in a second", **{"Retry-After": "1"})
        else:
            try:
                if request.path.startswith("/api/"):
                    async with busy:
                        response = await handler(request)
                else:
                    response = await handler(request)
            except web.HTTPException as e:  # aiohttp's own 404/405 for unknown routes
                response = _error(e.status, e.reason)
        response.headers.update(SECURITY_HEADERS)
        return response

    app = web.Application(middlewares=[guard], client_max_size=limits.body_bytes)
    bundle = load_bundle()
    for path, (body, ctype) in bundle.items():
        app.router.add_get(path, _static(body, ctype))
    app.router.add_get("/api/me", views.me)
    app.router.add_get("/api/jobs", views.jobs)
    app.router.add_get("/api/jobs/{job_id}", views.job)
    app.router.add_get("/api/nodes", views.nodes)
    return app


def _static(body: bytes, ctype: str) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers={"Content-Type": ctype})

    return serve


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class Dashboard:
    """The dashboard listening on its port; stop() closes it."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port

    async def stop(self) -> None:
        await self.runner.cleanup()


async def open_dashboard(
    listen: str,
    views: Views,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    insecure: bool = False,
    limits: DashboardLimits = DashboardLimits(),
) -> Dashboard:
    """Serve the dashboard on host:port (port 0: any free one): HTTPS with a certificate, plain
    HTTP only on loopback unless `insecure` (tensorgrid.tls.check_listen, as for gRPC)."""
    context = None
    if tls.check_listen(listen, tls_cert, tls_key, insecure):
        assert tls_cert is not None and tls_key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    runner = web.AppRunner(
        build_app(views, limits),
        access_log=None,  # the fragment never reaches us anyway; nor should paths of job ids in logs
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
        keepalive_timeout=limits.keepalive_s,
    )
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=context)
    await site.start()
    bound = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    scheme = "https" if context is not None else "http"
    log.info("dashboard on %s://%s:%d/ (open it with `tensorgrid dashboard`)", scheme, host, bound)
    return Dashboard(runner, bound)
