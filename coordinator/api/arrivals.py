"""Tells the group committers which calls are on their way to them (coordinator.commits.Arrivals).

A call is counted from the moment its RPC starts, before its request message is read, so a
committer about to flush knows whether waiting would gather more: a result or lease call whose
message is still being received is worth waiting for; with none on the way it commits at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from coordinator.commits import Arrivals

_NODE = "/tensorgrid.v1.NodeService/"
RESULT_METHODS = (_NODE + "SubmitSmallResult", _NODE + "SubmitResult")
LEASE_METHODS = (_NODE + "LeaseTasks",)


class ArrivalsInterceptor(grpc.aio.ServerInterceptor):
    """Counts each call of a method in `routes` into that method's Arrivals as it starts."""

    def __init__(self, routes: Mapping[str, Arrivals]) -> None:
        self._routes = dict(routes)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        arrivals = self._routes.get(details.method)
        if arrivals is not None:
            arrivals.expect()  # in this call's context: its handler runs in it too
        return await continuation(details)


def committer_routes(results: Arrivals | None, leases: Arrivals | None) -> dict[str, Arrivals]:
    """The result and lease methods, each to its committer's Arrivals (if it has one)."""
    routes: dict[str, Arrivals] = {}
    for methods, arrivals in ((RESULT_METHODS, results), (LEASE_METHODS, leases)):
        if arrivals is not None:
            routes.update(dict.fromkeys(methods, arrivals))
    return routes
