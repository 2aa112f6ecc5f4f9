"""gRPC health (grpc.health.v1) that says whether the coordinator can do its work.

SERVING while it runs and reaches its database; NOT_SERVING while it cannot reach the database
(checked every health_interval_ms) and from the moment it begins to shut down, for drain_s
before it stops taking calls, so a load balancer or an orchestrator sends new work elsewhere
first. The overall status ("") and each service's move together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from grpc_health.v1 import health, health_pb2

log = logging.getLogger("tensorgrid.coordinator")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self, names: Iterable[str]) -> None:
        self.servicer = health.aio.HealthServicer()
        self.names = (*names, "")
        self.serving: bool | None = None
        self.stopping = False

    async def set(self, serving: bool, why: str = "") -> None:
        if self.stopping:
            serving = False
        if serving == self.serving:
            return
        if self.serving is not None:
            log.warning("health: %s%s", "SERVING" if serving else "NOT_SERVING", f" ({why})" if why else "")
        self.serving = serving
        for name in self.names:
            await self.servicer.set(name, SERVING if serving else NOT_SERVING)

    async def drain(self) -> None:
        """From now on NOT_SERVING, whatever the database says."""
        await self.set(False, "shutting down")
        self.stopping = True

    async def watch_database(self, ping: Callable[[], Awaitable[object]], interval_s: float) -> None:
        """Follow the database: NOT_SERVING while `ping` fails or takes over interval_s."""
        while True:
            try:
                await asyncio.wait_for(ping(), max(interval_s, 1.0))
                await self.set(True, "the database answers again")
            except Exception as e:  # unreachable, refused, timed out: all the same to a client
                await self.set(False, f"the database is unreachable: {type(e).__name__}: {str(e)[:200]}")
            await asyncio.sleep(interval_s)
