"""A request sent again is answered once: the SDK names each request with a random key
(InferRequest.request_key) and sends the same key when it sends the request again, after a
stream broke or a refusal it retries. Without it, a request answered just as its InferStream
broke, or whose unary answer was lost, ran again on a replica and was billed twice: the
submitter would pay for more than the verified work done.

Here, per (caller, endpoint, key): while the first run is in flight a repeat waits for its
answer; once it answered, a repeat within KEEP_S gets that answer again, not run nor billed. A
run that failed is forgotten (a failure is not billed, so a repeat runs again). One coordinator
replica's memory: a repeat that reaches another replica (the first one died) runs there.

Who could abuse it:
- a caller sending another input under a key it used: refused (INVALID_ARGUMENT): a key names
  one request, and answering it with the first input's output would be wrong for the caller;
- a caller keying every request to fill the coordinator's memory with answers: at most
  MAX_ENTRIES answers and MAX_BYTES of their inputs and outputs are kept, the oldest dropped
  first (a repeat after that runs again, as with no key); keys are at most MAX_KEY_BYTES;
  keeping the bounds costs a request only the entries it drops (the table was read whole with
  every keyed request: ~0.6 ms of the coordinator's one loop a request once full, which any
  caller filled in seconds, slowing every caller's requests);
- another caller guessing a key: entries are per caller and endpoint, so it gets nothing of
  another's.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from coordinator.services.serving.errors import ServingError

KEEP_S = 60.0  # how long an answer is kept for a repeat of its request
MAX_ENTRIES = 4096
MAX_BYTES = 64 << 20  # inputs and outputs kept, in all
MAX_KEY_BYTES = 32

Answer = tuple[bytes, str, int]  # output, node, attempts (Router.infer)


class KeyReused(ServingError):
    """A request key sent again with another input."""

    code = "INVALID_ARGUMENT"


@dataclass
class _Entry:
    data: bytes
    answer: asyncio.Future[Answer]
    done_at: float | None = None  # when it answered (None: in flight)
    size: int = field(default=0)


class Once:
    """The answers of keyed requests, kept for their repeats (see the module)."""

    def __init__(
        self,
        keep_s: float = KEEP_S,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keep_s, self.max_entries, self.max_bytes, self.clock = keep_s, max_entries, max_bytes, clock
        self._entries: OrderedDict[tuple[str, str, bytes], _Entry] = OrderedDict()
        self._bytes = 0
        self.repeats = 0  # repeats answered without a run

    async def run(
        self, caller: str, endpoint_id: str, key: bytes, data: bytes, infer: Callable[[], Awaitable[Answer]]
    ) -> Answer:
        """infer()'s answer for this request, or the answer its first run under `key` gave."""
        if not key:
            return await infer()
        if len(key) > MAX_KEY_BYTES:
            raise KeyReused(f"a request key is at most {MAX_KEY_BYTES} bytes, not {len(key)}")
        self._expire()
        name = (caller, endpoint_id, bytes(key))
        entry = self._entries.get(name)
        if entry is not None:
            if entry.data != data:
                raise KeyReused("this request key was sent with another input: a key names one request")
            self.repeats += 1
            return await asyncio.shield(entry.answer)
        entry = _Entry(data, asyncio.get_running_loop().create_future(), size=len(data))
        self._entries[name] = entry
        self._bytes += entry.size
        try:
            answer = await infer()
        except BaseException as e:
            self._drop(name)  # a failure is not billed: a repeat runs again
            if not entry.answer.done():
                entry.answer.set_exception(e)
                entry.answer.exception()  # retrieved: no waiter is owed it
            raise
        entry.answer.set_result(answer)
        entry.done_at = self.clock()
        entry.size += len(answer[0])
        self._bytes += len(answer[0])
        self._trim()
        return answer

    def _drop(self, name: tuple[str, str, bytes]) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry.size

    def _expire(self) -> None:
        """Answers older than keep_s out (oldest first; those in flight are passed over). Runs
        with every keyed request: it reads only the entries it drops and those in flight ahead
        of the first kept one, not the whole table (up to max_entries)."""
        now = self.clock()
        gone = []
        for name, entry in self._entries.items():
            if entry.done_at is None:
                continue
            if now - entry.done_at < self.keep_s:
                break
            gone.append(name)
        for name in gone:
            self._drop(name)

    def _trim(self) -> None:
        """Oldest answered entries out until the bounds hold (those in flight stay: bounded by calls)."""
        if len(self._entries) <= self.max_entries and self._bytes <= self.max_bytes:
            return  # the usual case: nothing to read
        over_n, over_b = len(self._entries) - self.max_entries, self._bytes - self.max_bytes
        gone = []
        for name, entry in self._entries.items():
            if over_n <= 0 and over_b <= 0:
                break
            if entry.done_at is not None:
                gone.append(name)
                over_n, over_b = over_n - 1, over_b - entry.size
        for name in gone:
            self._drop(name)
