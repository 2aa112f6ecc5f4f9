"""Several coordinator replicas behind one address list: pick the first that works, stay with it,
move to the next when it stops answering.

`--coordinator a:7070,b:7070` (or `TENSORGRID_COORDINATOR`) names replicas that share one
database, so a session, a lease or a kept result is as good at one as at the other. A channel
is sticky: it moves on only when a call over the current replica fails with UNAVAILABLE (the
replica is down, restarting or unreachable), never on a refusal. Each failure moves one step
along the ordered list (wrapping around), and only if the failed call went over the replica
still current, so a burst of calls failing together moves the channel once, not once per call.
How long to wait before trying again stays the caller's (tensorgrid.retry.backoff).

Who could abuse this: whoever controls one listed address can answer as that replica, exactly
as with a single address; TLS verifies each replica's certificate against the same CA, and a
node still refuses to sign under an EIP-712 domain other than its deployment's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tensorgrid.errors import TensorGridError
from tensorgrid.tls import ClientTls, open_channel


def parse_targets(target: str) -> list[str]:
    """The replicas of `a:1,b:2` in order (spaces ignored, duplicates dropped); at least one."""
    seen: list[str] = []
    for part in target.split(","):
        part = part.strip()
        if part and part not in seen:
            seen.append(part)
    if not seen:
        raise TensorGridError(f"no coordinator address in {target!r}: give HOST:PORT[,HOST:PORT…]")
    return seen


def unavailable(e: BaseException) -> bool:
    """Whether a gRPC error means the replica itself did not answer (move on to the next one)."""
    code = getattr(e, "code", None)
    try:
        return callable(code) and code() == grpc.StatusCode.UNAVAILABLE
    except Exception:  # a call object that has no status yet
        return False


class Targets:
    """An ordered list of replica addresses and which one is current (thread-safe)."""

    def __init__(self, target: str | list[str]) -> None:
        self.all = parse_targets(target) if isinstance(target, str) else parse_targets(",".join(target))
        self.index = 0
        self.generation = 0  # bumped on every move: a failure seen under an older one moves nothing
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        return self.all[self.index]

    @property
    def several(self) -> bool:
        return len(self.all) > 1

    def move_on(self, seen_generation: int) -> bool:
        """The replica current at `seen_generation` failed: make the next one current. False when
        there is no other replica, or another failure already moved on."""
        with self._lock:
            if not self.several or seen_generation != self.generation:
                return False
            self.index = (self.index + 1) % len(self.all)
            self.generation += 1
            return True


class FailoverChannel(grpc.Channel):
    """A grpc.Channel over several replicas; stubs built on it follow the current replica.

    Unary-request calls (`stub.Method(request)`, `.with_call`) that fail with UNAVAILABLE are sent
    again to each other replica once before the error is raised: the coordinator's unary calls are
    safe to repeat (a submit of the same spec is a no-op, reads change nothing). Streams and
    futures cannot be replayed: they move the channel on and raise, and their callers' retry
    loops reconnect to the next replica.
    """

    def __init__(self, target: str, tls: ClientTls | None = None) -> None:
        self.targets = Targets(target)
        self._tls = tls
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def channel(self) -> tuple[grpc.Channel, int]:
        """The current replica's channel (opened on first use) and the generation it belongs to."""
        with self._lock:
            target, generation = self.targets.current, self.targets.generation
            ch = self._channels.get(target)
            if ch is None:
                ch = self._channels[target] = open_channel(target, self._tls)
            return ch, generation

    def failed(self, e: BaseException, generation: int) -> bool:
        """Note a call's error; True when it moved the channel to another replica."""
        return unavailable(e) and self.targets.move_on(generation)

    def moved_since(self, e: BaseException, generation: int) -> bool:
        """Whether a call that failed unavailable went over a replica the channel has left since."""
        return unavailable(e) and self.targets.generation != generation

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Method(self, "unary_unary", method, args, kwargs, replay=True)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Method(self, "unary_stream", method, args, kwargs, replay=False)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Method(self, "stream_unary", method, args, kwargs, replay=False)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Method(self, "stream_stream", method, args, kwargs, replay=False)

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self.channel()[0].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        self.channel()[0].unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()

    def __enter__(self) -> FailoverChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Method:
    """One RPC method of a stub on a FailoverChannel: resolved on the current replica per call."""

    def __init__(
        self,
        owner: FailoverChannel,
        shape: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        replay: bool,
    ) -> None:
        self._owner = owner
        self._shape = shape
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._replay = replay
        self._cache: dict[int, Any] = {}  # id(channel) → its multi-callable

    def _callable(self) -> tuple[Any, int]:
        ch, generation = self._owner.channel()
        found = self._cache.get(id(ch))
        if found is None or found[0] is not ch:
            found = self._cache[id(ch)] = (ch, getattr(ch, self._shape)(self._method, *self._args, **self._kwargs))
        return found[1], generation

    def _invoke(self, attr: str, *args: Any, **kwargs: Any) -> Any:
        tries = len(self._owner.targets.all) if self._replay else 1
        for attempt in range(tries):
            multi, generation = self._callable()
            try:
                result = getattr(multi, attr)(*args, **kwargs) if attr else multi(*args, **kwargs)
            except grpc.RpcError as e:
                # Sent again when this failure moved the channel, or another call's failure (a stream
                # broken by the same replica's death) moved it while this one was under way.
                moved = self._owner.failed(e, generation) or self._owner.moved_since(e, generation)
                if not moved or attempt == tries - 1:
                    raise
                continue
            if self._shape in ("unary_stream", "stream_stream"):
                return _Stream(result, self._owner, generation)
            return result
        raise AssertionError("unreachable")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("", *args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("with_call", *args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        multi, generation = self._callable()
        fut = multi.future(*args, **kwargs)
        fut.add_done_callback(lambda f: self._done(f, generation))
        return fut

    def _done(self, fut: Any, generation: int) -> None:
        if not fut.cancelled() and (e := fut.exception()) is not None:
            self._owner.failed(e, generation)


class _Stream:
    """A response stream that moves its channel on when it ends with UNAVAILABLE (then re-raises)."""

    def __init__(self, call: Any, owner: FailoverChannel, generation: int) -> None:
        self._call = call
        self._owner = owner
        self._generation = generation

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            self._owner.failed(e, self._generation)
            raise

    def __getattr__(self, name: str) -> Any:  # cancel(), code(), trailing_metadata() …
        return getattr(self._call, name)
