"""Fetching a task's blobs into the node's hash-checked cache: its program, its input and any
further blobs its settings name (a training round's global weights). A stream the coordinator
refuses as busy is retried after its hint; one cut off by the link resumes where it broke."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from node.handin import BUSY_RETRIES
from node.host import Host
from tensorgrid.errors import TensorGridError
from tensorgrid.retry import backoff
from tensorgrid.rpc import retry_after_s
from tensorgrid.types import BlobRef, ErrorKind, Lease, TaskError

log = logging.getLogger("tensorgrid.node")


@dataclass(frozen=True)
class TaskBlobs:
    """A task's blobs, in the cache: where its program and input are, and its settings with
    the paths of any further blobs under "paths"."""

    model: Path | None
    input: Path
    settings: dict[str, object]


class BlobFetcher:
    """Blobs through the agent's client (read through the agent, so a client swapped in later is used)."""

    def __init__(self, agent: Host) -> None:
        self.agent = agent

    async def task_blobs(self, lease: Lease) -> TaskBlobs | TaskError:
        """All the blobs a lease needs, in the cache; or why they could not be had."""
        cache = self.agent.cache
        settings = dict(lease.settings)
        try:
            model = await cache.ensure(lease.model, self.fetcher(lease.model)) if lease.model else None
            inputs = await cache.ensure(lease.input, self.fetcher(lease.input))
            extra = settings.get("blobs")
            if isinstance(extra, dict) and extra:
                paths = {}
                for name, value in extra.items():
                    ref = BlobRef(str(value["sha256"]), int(value["size"]))
                    paths[str(name)] = str(await cache.ensure(ref, self.fetcher(ref)))
                settings["paths"] = paths
        except (KeyError, TypeError, ValueError) as e:
            return TaskError(ErrorKind.INVALID_INPUT, f"bad blob list in the task's settings: {e}")
        except (TensorGridError, grpc.aio.AioRpcError) as e:
            msg = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            return TaskError(ErrorKind.BLOB_UNAVAILABLE, f"could not fetch inputs: {msg}")
        return TaskBlobs(model, inputs, settings)

    def fetcher(self, ref: BlobRef) -> Callable[[int], AsyncIterator[bytes]]:
        return lambda offset: self.fetch(ref, offset)

    async def fetch(self, ref: BlobRef, offset: int) -> AsyncIterator[bytes]:
        """FetchBlob from offset; a stream the coordinator refuses as too many is retried after its
        hint, and one cut off (a connection reset on the way: UNAVAILABLE) resumes where it broke,
        so a flaky link costs a round trip, not the task (which would go back to the queue)."""
        metrics = self.agent.metrics
        for failures in range(1, BUSY_RETRIES + 1):
            try:
                async for chunk in self.agent.client.fetch(ref, offset):
                    offset += len(chunk)
                    if metrics is not None:
                        metrics.downloaded(len(chunk))
                    yield chunk
                return
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    raise
                if failures == BUSY_RETRIES:
                    raise
                if code == grpc.StatusCode.UNAVAILABLE:
                    log.info(
                        "fetching blob %s broke off at %d bytes (%s); resuming", ref.sha256[:12], offset, e.details()
                    )
                    await asyncio.sleep(backoff(failures, 0.25, cap=2.0))
                    continue
                log.info("coordinator busy fetching blob %s; retrying", ref.sha256[:12])
                await asyncio.sleep(retry_after_s(e, failures))
