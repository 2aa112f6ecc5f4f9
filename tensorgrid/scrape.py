"""A Prometheus registry served over HTTP: the coordinator's and the node's --metrics-listen.

prometheus_client is imported by the caller's metrics module, never by the SDK: it comes with
the [node] and [coordinator] extras.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger("tensorgrid")


class ScrapeEndpoint:
    """/metrics of one registry on host:port (port 0: any free one), served by a thread."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._server: Any
        self._server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        self.port = int(self._server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self, wait: bool = True) -> None:
        """Stop serving; wait=False returns at once (e.g. on an event loop) and lets a thread finish it."""
        server = self._server

        def close() -> None:
            server.shutdown()
            server.server_close()

        if wait:
            close()
        else:
            threading.Thread(target=close, daemon=True).start()
