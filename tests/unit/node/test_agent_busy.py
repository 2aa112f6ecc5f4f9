"""The node agent backs off and retries when the coordinator refuses a call as RESOURCE_EXHAUSTED
(it is at its peer limits), waiting as long as the coordinator's hint says, and gives up on other errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from node.agent import BUSY_RETRIES, Agent
from node.cache import BlobCache
from node.config import AgentConfig
from node.handin import checkpoint_file
from tensorgrid.crypto import Signer
from tensorgrid.rpc import RETRY_AFTER_METADATA_KEY
from tensorgrid.types import BlobRef, Capabilities, ErrorKind, TaskError

REF = BlobRef("ab" * 32, 6)


def refused(code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED, hint_ms: int = 20) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((RETRY_AFTER_METADATA_KEY, str(hint_ms)))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="node 0x… already has 16 streams open")


class BusyCoordinator:
    """Refuses the first `busy` calls of each kind, then answers."""

    def __init__(self, busy: int, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED) -> None:
        self.busy = {"fetch": busy, "report": busy}
        self.code = code
        self.calls = {"fetch": 0, "report": 0}
        self.offsets: list[int] = []

    def _maybe_refuse(self, what: str) -> None:
        self.calls[what] += 1
        if self.busy[what] > 0:
            self.busy[what] -= 1
            raise refused(self.code)

    def fetch(self, ref: BlobRef, offset: int = 0) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            self.offsets.append(offset)
            if offset == 0:
                yield b"abc"  # part of the blob arrives, then the stream is refused
            self._maybe_refuse("fetch")
            yield b"def"[max(0, offset - 3) :]

        return chunks()

    async def report(self, task_id: str, attempt: int, error: TaskError, timeout: float | None = None) -> bool:
        self._maybe_refuse("report")
        return True

    async def close(self) -> None:
        pass


def agent(tmp_path: Path, coordinator: BusyCoordinator) -> Agent:
    a = Agent(
        AgentConfig("127.0.0.1:1", tmp_path / "work"),
        Signer.generate(),
        Capabilities(device_kind="cpu", memory_bytes=1 << 30, cpu_cores=1),
        BlobCache(tmp_path / "cache", 1 << 20),
    )
    a.client = coordinator  # type: ignore[assignment]
    return a


async def _read(tmp_path: Path, coordinator: BusyCoordinator) -> bytes:
    a = agent(tmp_path, coordinator)  # in the loop: the agent's channel belongs to it
    return b"".join([chunk async for chunk in a._fetcher(REF)(0)])


async def _report(tmp_path: Path, coordinator: BusyCoordinator) -> None:
    await agent(tmp_path, coordinator)._report("t" * 64, 1, TaskError(ErrorKind.EXECUTION, "boom"))


def test_a_refused_fetch_resumes_after_the_hint(tmp_path: Path) -> None:
    busy = BusyCoordinator(busy=2)
    start = time.monotonic()
    assert asyncio.run(_read(tmp_path, busy)) == b"abcdef"
    assert busy.calls["fetch"] == 3 and busy.offsets == [0, 3, 3]  # resumed where it stopped
    assert time.monotonic() - start >= 0.02 + 0.03  # waited the hint, a little longer the second time


def test_a_refused_report_is_retried_then_given_up(tmp_path: Path) -> None:
    busy = BusyCoordinator(busy=1)
    asyncio.run(_report(tmp_path, busy))
    assert busy.calls["report"] == 2
    always = BusyCoordinator(busy=10**6)
    asyncio.run(_report(tmp_path, always))
    assert always.calls["report"] == BUSY_RETRIES


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    denied = BusyCoordinator(busy=1, code=grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(_read(tmp_path, denied))
    assert denied.calls["fetch"] == 1


class _Revealing:
    """A coordinator that does not answer `unanswered` reveals (a replica dying, the next one
    busy), then takes them."""

    def __init__(self, unanswered: list[grpc.StatusCode]) -> None:
        self.unanswered = unanswered
        self.taken: list[int] = []
        self.calls = 0
        self.target = "127.0.0.1:1"

    async def reveal(self, task_id: str, attempt: int, step: int, data: Path) -> tuple[bool, str]:
        self.calls += 1
        if self.unanswered:
            raise refused(self.unanswered.pop(0), hint_ms=1)
        self.taken.append(step)
        return True, ""

    async def close(self) -> None:
        pass


def test_a_reveal_no_coordinator_answered_is_sent_again_until_one_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint its audit waits for: lost, the audit holds its round open until the round's
    deadline (15 minutes by default). It used to be tried three times in about 1.5 s."""
    monkeypatch.setattr("node.handin.backoff", lambda failures, base, cap=0.0: 0.001)
    codes = grpc.StatusCode
    coordinator = _Revealing([codes.UNAVAILABLE, codes.UNAVAILABLE, codes.RESOURCE_EXHAUSTED, codes.UNAVAILABLE])
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / checkpoint_file(5)).write_bytes(b"weights")
    lease = SimpleNamespace(task_id="t" * 64, attempt=1)

    async def scenario() -> None:
        a = agent(tmp_path, coordinator)  # type: ignore[arg-type]
        await a.handin.reveal(lease, tmp_path / "ckpt", [5])  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert coordinator.taken == [5] and coordinator.calls == 5

    refusing = _Revealing([codes.INVALID_ARGUMENT])  # a refusal is not retried

    async def refused_once() -> None:
        await agent(tmp_path, refusing).handin.reveal(lease, tmp_path / "ckpt", [5])  # type: ignore[arg-type]

    asyncio.run(refused_once())
    assert refusing.calls == 1 and refusing.taken == []
