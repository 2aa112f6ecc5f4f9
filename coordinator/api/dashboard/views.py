"""The dashboard's JSON endpoints (all GET):

  /api/me             who the token is: {"address", "operator"}                        (session)
  /api/jobs?limit=N   the caller's newest jobs (N ≤ 200): {"jobs": [summary, …]}     (session)
  /api/jobs/{job_id}  one job: summary, spec, result, verification, settlement, rounds (session)
  /api/nodes          the grid's nodes: record, reputation, stake, earnings            (public)

A session is `Authorization: Bearer <dashboard session token>` (OpenSession with scope
"dashboard", as `tensorgrid dashboard` opens one); a full submitter session's token is refused
here, as every gRPC call refuses a dashboard one. No token, or a bad, expired or full one: 401
with how to get a link. Another submitter's job: 404, as for one that does not exist.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from aiohttp import web

from coordinator.api.sessions import FailureLimiter, SessionCache
from coordinator.errors import NotFound
from coordinator.services.access import Access
from coordinator.services.dashboard import DashboardData
from coordinator.services.runtime import Runtime

HOW_TO = "run `tensorgrid dashboard` with your submitter key for a new link"
BAD_TOKEN = "the session token is unknown or expired, or is no dashboard link's (an SDK session's is refused)"
MAX_JOBS = 200
NODES_CACHE_S = 2.0
_JOB_ID = re.compile(r"[0-9a-fA-F]{1,64}")


def peer_host(request: web.Request) -> str:
    """The caller's host as the gRPC limiter names it ("ipv4:1.2.3.4", "ipv6:[::1]"): one budget
    of failed authentications per host over both."""
    remote = request.remote or "unknown"
    return f"ipv6:[{remote}]" if ":" in remote else f"ipv4:{remote}"


def _json(body: Any, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


class Views:
    def __init__(
        self, rt: Runtime, access: Access, data: DashboardData, sessions: SessionCache, limiter: FailureLimiter
    ) -> None:
        """sessions: the dashboard sessions' cache (api.server.Sessions.dashboards), never the
        submitters' one: a full session's token must not open the dashboard."""
        self.rt = rt
        self.access = access
        self.data = data
        self.sessions = sessions
        self.limiter = limiter
        self._nodes: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._nodes_lock = asyncio.Lock()

    async def _caller(self, request: web.Request) -> str | web.Response:
        """The session's address, or the response refusing the request."""
        host = peer_host(request)
        wait = self.limiter.retry_after_ms(host)
        if wait:
            return _json(
                {"error": f"too many failed authentications from your address: retry after {wait / 1000:.0f} s"},
                429,
                **{"Retry-After": str(max(1, wait // 1000))},
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        address = await self.sessions.resolve(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if address is None:
            self.limiter.failed(host)
            why = BAD_TOKEN if token.strip() else "no session token"
            return _json({"error": f"{why}: {HOW_TO}", "how": HOW_TO}, 401, **{"WWW-Authenticate": "Bearer"})
        return address

    async def me(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        return _json({"address": caller, "operator": self.access.is_operator(caller)})

    async def jobs(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            return _json({"error": "limit must be a whole number"}, 400)
        if not 1 <= limit <= MAX_JOBS:
            return _json({"error": f"limit must be between 1 and {MAX_JOBS}"}, 400)
        submitter = self.access.list_filter(caller, "")  # the operator sees every job, as in ListJobs
        return _json({"jobs": await self.rt.db_bulk(self.data.jobs, submitter, limit)})

    async def job(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        job_id = request.match_info["job_id"]
        missing = _json({"error": f"no job {job_id[:64]} among your jobs"}, 404)
        if not _JOB_ID.fullmatch(job_id):
            return missing
        try:
            job = await self.access.job_for(caller, job_id.lower())
        except NotFound:
            return missing  # another submitter's job reads exactly as no job at all
        return _json(await self.rt.db_bulk(self.data.job_detail, job))

    async def nodes(self, request: web.Request) -> web.Response:
        async with self._nodes_lock:  # one scan at a time, reused for NODES_CACHE_S
            at, nodes = self._nodes
            if time.monotonic() - at > NODES_CACHE_S:
                nodes = await self.rt.db_bulk(self.data.nodes)
                self._nodes = (time.monotonic(), nodes)
        return _json({"nodes": nodes, "now_ms": int(time.time() * 1000)})
