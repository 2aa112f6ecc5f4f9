"""One worker slot's leasing loop, holding at most one lease ahead of the task it runs.

A slot runs one task at a time in its sandboxed worker. On a distant link each task used to
wait two round trips after the one before it: its result in (SubmitResult, which also asked
for the next lease) and the next input down (FetchBlob). So a slot keeps one lease ahead: near
the end of task k, lease k+1 is granted and its blobs are fetched into the cache (the worker's
program cache keeps the model warm), so when k finishes, k+1 starts at once, and k's result is
handed in beside it.

When to lease ahead: late, not at once. A lease held ahead is a task no other node can start:
at a job's tail, a slot that took the next lease when its task began kept the job's last task
queued behind a run of its own while another node, finishing moments later, found nothing
(benchmarks.generation, 4 shards on 2 nodes: one node ran 3 of them, the other idled for half
the job). So the lease ahead is asked for AHEAD_LEAD_S plus the last fetch's time before the
running task is expected to end: as long as the slot's last run took, less its program load
(the next task of a job finds its program warm). A task that ends sooner hands its result in
asking for the next, as without a lease ahead. Tasks shorter than the lead lease ahead at once,
with the result before them (one leasing round trip per task).

Who could abuse holding leases ahead: a node hoarding leases, keeping work from other nodes
while it sits on it. This daemon never holds more than one ahead per slot, and only when the
slot's last task ran for at most AHEAD_MAX_SHARE of the time limit (so a lease waits ahead for
seconds, not minutes). What bounds a node that is not this daemon is the coordinator alone: a
node holds at most --max-node-leases (64) leases at once, however it asks (repositories/leasing.py;
a lease call grants at most min(max_tasks, 256) of them, results ask for at most MAX_WANT more,
services/acceptance.py), and a lease nobody heartbeats expires after the lease TTL, one
heartbeated lives at most time_limit + grace from its grant (the heartbeat cap), after which it
is reissued and its late result refused: a hoarder delays at most that many tasks by that long.

Deadlines: the coordinator's heartbeat cap counts from the grant (leased_ms), so a lease that
waited ahead has that wait taken from its compute time. The wait is about the lead (at most
one run of the task before it); the slot leases ahead only when that run was short against the
limit (AHEAD_MAX_SHARE), and the worker's time limit is shortened by the wait, so it still ends
where the coordinator's cap says (a lease that waited its whole limit is given back unrun).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import grpc

from node.executor import Executor, TaskOutcome, TaskRequest
from node.fetching import BlobFetcher, TaskBlobs
from node.handin import HandIn
from node.host import Host
from tensorgrid.rpc import LEASE_WAIT_MS, retry_after_s, unless_set
from tensorgrid.types import ErrorKind, Lease, TaskError

log = logging.getLogger("tensorgrid.node")
CHECKPOINTS = "checkpoints"
AHEAD_MAX_SHARE = 0.1  # lease ahead only when a run takes at most this share of a task's time limit
SHORTENED_SHARE = 0.1  # a timeout whose limit waiting ahead took more of is the node's own (_shortened)
AHEAD_LEAD_S = 1.0  # lease ahead this long (plus the last fetch's time) before the running task should end


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Timing:
    fetch_s: float  # the task's blobs into the cache (0 when they were there)
    run_s: float  # the worker's whole turn: request, program load, forward passes, output written


@dataclass(eq=False)
class Held:
    """A lease this slot holds and has not started: granted at `arrived` (monotonic), its blobs
    on their way into the cache (`blobs`) when it is held ahead."""

    lease: Lease
    arrived: float
    blobs: asyncio.Task[TaskBlobs | TaskError] | None = None
    dropped: bool = False  # revoked or given back while it waited


class SlotHost(Host, Protocol):
    """The agent as a slot sees it: Host, with its result hand-in and blob fetcher."""

    handin: HandIn
    fetcher: BlobFetcher


class Slot:
    """One executor's loop: lease, run, hand in; with one lease held ahead when it pays."""

    def __init__(self, agent: SlotHost, ex: Executor) -> None:
        self.agent = agent
        self.ex = ex
        # The next lease on its way (granted with a result, or by LeaseTasks) or here: at most one.
        self.ahead: asyncio.Task[Held | None] | None = None
        self.last_run_s: float | None = None  # the last run's length, less its program load (the next is warm)
        self.last_fetch_s = 0.0  # how long the last task's blobs took to arrive (a lease ahead's: from its request)

    async def run(self) -> None:
        """Work until the agent drains; then give back what is held and let hand-ins finish."""
        a = self.agent
        held: Held | None = None
        while not a.draining.is_set():
            if held is None:
                held = await self._take_ahead() or await self._lease_one()
            if held is not None:
                held = await self._turn(held)
        if held is not None:  # granted as we began to drain: hand it straight back
            await self._give_back(held, "node is draining")
        ahead = await self._take_ahead()  # a result handed in beside the last task: let it finish
        if ahead is not None:
            await self._give_back(ahead, "node is draining")

    # ---- leases held ------------------------------------------------------------------------
    def may_lease_ahead(self, lease: Lease) -> bool:
        """Whether to hold a lease ahead while `lease` runs: not for training (its result may be
        followed by checkpoint reveals), not before a run of this slot was measured, and only
        when that run took at most AHEAD_MAX_SHARE of the task's time limit."""
        if self.agent.draining.is_set() or lease.kind == "training" or self.last_run_s is None:
            return False
        return lease.time_limit_ms > 0 and self.last_run_s <= AHEAD_MAX_SHARE * lease.time_limit_ms / 1000

    def ahead_delay(self, lease: Lease) -> float | None:
        """Seconds from the start of `lease`'s run until its slot should ask for the lease ahead
        (0: now), or None for no lease ahead: the last run's length less the lead (AHEAD_LEAD_S
        and the last fetch's time), so the next task's blobs arrive just before this one ends."""
        if not self.may_lease_ahead(lease):
            return None
        assert self.last_run_s is not None
        return max(0.0, self.last_run_s - AHEAD_LEAD_S - self.last_fetch_s)

    def _plan_ahead(self, lease: Lease, ended: asyncio.Event) -> None:
        """Arrange the lease ahead of `lease`'s run (see ahead_delay): now, later, or not at all.
        A lease the previous result's hand-in brings (self.ahead) is the one ahead."""
        delay = self.ahead_delay(lease)
        if delay is None:
            return
        if delay <= 0 and self.ahead is None:
            self.ahead = asyncio.create_task(self._lease_ahead())
        else:
            self.ahead = asyncio.create_task(self._lease_ahead_later(self.ahead, delay, ended))

    async def _lease_ahead_later(
        self, prior: asyncio.Task[Held | None] | None, delay: float, ended: asyncio.Event
    ) -> Held | None:
        """After `delay` seconds, the lease ahead, unless the running task has `ended` first (its
        hand-in then asks for the next lease). `prior`, the previous result's hand-in, finishes first."""
        due = time.monotonic() + delay
        if prior is not None:
            held = await prior
            if held is not None:  # it brought a lease after all: that one is ahead
                return held
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), max(0.0, due - time.monotonic()))
        if ended.is_set() or self.agent.draining.is_set():
            return None
        return await self._lease_ahead()

    async def _take_ahead(self) -> Held | None:
        ahead, self.ahead = self.ahead, None
        return await ahead if ahead is not None else None

    async def _hold(self, leases: list[Lease], prefetch: bool, asked: float | None = None) -> Held | None:
        """Take the first lease as this slot's next (fetching its blobs now when `prefetch`, timed
        from `asked`, when it was asked for); more than one, or any while draining, goes back."""
        a = self.agent
        if not leases:
            return None
        first, extra = (None, leases) if a.draining.is_set() else (leases[0], leases[1:])
        for lease in extra:
            await a.handin.report(lease.task_id, lease.attempt, _released(first))
        if first is None:
            return None
        held = Held(first, time.monotonic())
        self.ex.warm_up(first.kind)  # the worker starts while the blobs come
        if prefetch:
            held.blobs = asyncio.create_task(a.fetcher.task_blobs(first))
            since = time.monotonic() if asked is None else asked

            def fetched(done: asyncio.Task[TaskBlobs | TaskError]) -> None:
                if not done.cancelled():
                    self.last_fetch_s = time.monotonic() - since

            held.blobs.add_done_callback(fetched)

            async def drop() -> None:  # revoked while it waited: never run it
                held.dropped = True
                if held.blobs is not None:
                    held.blobs.cancel()
                a._active.pop(first.task_id, None)

            a._active[first.task_id] = (first.attempt, drop)  # heartbeats keep it alive
        return held

    async def _give_back(self, held: Held, why: str) -> None:
        a = self.agent
        if held.blobs is not None:
            held.blobs.cancel()
        a._active.pop(held.lease.task_id, None)
        a._revoked.discard((held.lease.task_id, held.lease.attempt))
        if not held.dropped:
            await a.handin.report(held.lease.task_id, held.lease.attempt, TaskError(ErrorKind.RELEASED, why))

    async def _lease_ahead(self) -> Held | None:
        """One lease to hold ahead, if there is one now (no long poll: the slot is busy)."""
        a = self.agent
        asked = time.monotonic()
        try:
            leases, _ = await a.client.lease(1, wait_ms=0)
        except grpc.aio.AioRpcError as e:
            await a._on_rpc_error(e, "lease ahead")
            return None
        return await self._hold(leases, prefetch=True, asked=asked)

    async def _lease_one(self) -> Held | None:
        """One lease, long-polling the coordinator; None when there was none (after any wait it asked for)."""
        a = self.agent
        await a._registered.wait()
        call = await unless_set(a.client.lease(1, wait_ms=LEASE_WAIT_MS), a.draining)
        if call is None:  # draining: stop waiting for work
            return None
        try:
            leases, retry_ms = call.result()
        except grpc.aio.AioRpcError as e:
            await a._on_rpc_error(e, "lease")
            busy = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            a._busy = a._busy + 1 if busy else 0
            await a._sleep_or_drain((retry_after_s(e, a._busy) if busy else 0.5) + random.random())
            return None
        a._busy = 0
        if not leases and retry_ms and not a.draining.is_set():
            await a._sleep_or_drain(min(retry_ms, 10_000) / 1000)
        return await self._hold(leases, prefetch=False)

    # ---- one task ---------------------------------------------------------------------------
    async def _turn(self, held: Held) -> Held | None:
        """Run one task and hand in its outcome; returns the slot's next lease, if one is held."""
        a, lease = self.agent, held.lease
        if held.dropped:  # revoked while it waited ahead
            await self._give_back(held, "revoked")
            return await self._take_ahead()
        waited = time.monotonic() - held.arrived
        if lease.time_limit_ms > 0 and waited >= lease.time_limit_ms / 1000:
            await self._give_back(held, "waited its time limit ahead")
            return await self._take_ahead()
        a._active[lease.task_id] = (lease.attempt, self.ex.cancel)
        out = a.config.work_dir / f"{lease.task_id}-{lease.attempt}.out"
        training = lease.kind == "training"
        ckpt = a.config.work_dir / CHECKPOINTS / f"{lease.task_id}-{lease.attempt}" if training else None
        ended = asyncio.Event()
        self._plan_ahead(lease, ended)
        beside = False
        try:
            try:
                outcome, timing = await self._execute(held, out, ckpt, waited)
            finally:
                ended.set()
            self.last_run_s = max(0.0, timing.run_s - outcome.load_seconds)
            if held.blobs is None:  # fetched in its turn (a prefetch timed itself)
                self.last_fetch_s = timing.fetch_s
            if a.metrics is not None:
                a.metrics.task(lease.kind, None if outcome.ok else _kind_of(outcome), timing.run_s)
            if outcome.ok and ckpt is None and self.ahead is not None:
                following = await self._take_ahead()
                if following is not None:  # it starts now; this result goes in beside it
                    a._active[lease.task_id] = (lease.attempt, _nothing)  # its executor runs the next task now
                    want = 1 if self.ahead_delay(following.lease) == 0 else 0  # else asked for later
                    self.ahead = asyncio.create_task(self._hand_in_beside(lease, out, outcome, timing, want))
                    beside = True
                    return following
            if outcome.ok:
                return await self._hand_in(lease, out, ckpt, outcome, timing)
            if outcome.error is not None:
                log.warning(
                    "task %s failed: %s: %s", lease.task_id[:12], outcome.error.kind.value, outcome.error.message[:300]
                )
                await a.handin.report(lease.task_id, lease.attempt, outcome.error)
            return await self._take_ahead()
        finally:
            if not beside:
                await self._done_with(lease, out, ckpt)

    async def _hand_in(
        self, lease: Lease, out: Path, ckpt: Path | None, outcome: TaskOutcome, timing: Timing
    ) -> Held | None:
        """Hand the result in, the slot waiting: asks for the next lease with it unless one is held."""
        a = self.agent
        # A training result may be followed by checkpoint reveals: its slot asks for work after those.
        want = 0 if ckpt is not None or a.draining.is_set() or self.ahead is not None else 1
        submitted = time.monotonic()
        accepted, reveal, granted = await a.handin.submit(lease, out, outcome.commitment, want)
        if reveal and ckpt is not None:
            await a.handin.reveal(lease, ckpt, reveal)
        if accepted:
            _log_timing(lease, outcome, timing, time.monotonic() - submitted)
        following = await self._hold(granted, prefetch=False)
        ahead = await self._take_ahead()
        if ahead is not None and following is not None:  # cannot happen (want was 0); never hold two
            await self._give_back(ahead, "not asked for")
        return following or ahead

    async def _hand_in_beside(
        self, lease: Lease, out: Path, outcome: TaskOutcome, timing: Timing, want: int
    ) -> Held | None:
        """Hand the result in while the slot's next task runs; the lease granted with the answer
        becomes the one held ahead."""
        try:
            submitted = time.monotonic()
            accepted, _, granted = await self.agent.handin.submit(lease, out, outcome.commitment, want)
            if accepted:
                _log_timing(lease, outcome, timing, time.monotonic() - submitted)
        finally:
            await self._done_with(lease, out, None)
        return await self._hold(granted, prefetch=True, asked=submitted)

    async def _done_with(self, lease: Lease, out: Path, ckpt: Path | None) -> None:
        a = self.agent
        entry = a._active.get(lease.task_id)
        if entry is not None and entry[0] == lease.attempt:
            del a._active[lease.task_id]
        a._revoked.discard((lease.task_id, lease.attempt))
        out.unlink(missing_ok=True)
        if ckpt is not None:
            await asyncio.to_thread(shutil.rmtree, ckpt, True)

    async def _execute(self, held: Held, out: Path, ckpt: Path | None, waited: float) -> tuple[TaskOutcome, Timing]:
        """Fetch the task's blobs (or wait for their prefetch) and run it; its outcome and how long
        each took. The worker's time limit is shortened by the time the lease waited ahead."""
        a, lease = self.agent, held.lease
        started = time.monotonic()
        blobs = await (held.blobs if held.blobs is not None else a.fetcher.task_blobs(lease))
        fetched = time.monotonic()
        if isinstance(blobs, TaskError):
            return TaskOutcome(ok=False, rows=0, seconds=0.0, error=blobs), Timing(fetched - started, 0.0)
        wanted = str(lease.settings.get("device", "any"))
        limit_s = lease.time_limit_ms / 1000
        request = TaskRequest(
            kind=lease.kind,
            model_path=str(blobs.model) if blobs.model else None,
            input_path=str(blobs.input),
            output_path=str(out),
            settings=blobs.settings,
            device=a.config.device if wanted == "any" else wanted,
            threads=a.config.threads,
            memory_limit_bytes=lease.memory_limit_bytes,
            time_limit_s=max(0.001, limit_s - waited) if limit_s > 0 else 0.0,
            checkpoint_dir=str(ckpt) if ckpt is not None else None,
        )
        outcome = _shortened(await self.ex.run(request), limit_s, waited)
        return outcome, Timing(fetched - started, max(0.0, time.monotonic() - fetched))


def _shortened(outcome: TaskOutcome, limit_s: float, waited: float) -> TaskOutcome:
    """A timeout of a run whose time limit this node shortened by more than SHORTENED_SHARE (its
    lease waited ahead) is the node's own failure, an execution error, not a claim that the program
    is too slow for the task's limit (coordinator repositories.claims: the referee measures the
    whole limit, and would refuse the claim of a run it did not get)."""
    error = outcome.error
    if error is None or error.kind != ErrorKind.TIMEOUT or limit_s <= 0 or waited <= SHORTENED_SHARE * limit_s:
        return outcome
    said = f"{error.message} (the lease waited {waited:.1f}s ahead of its {limit_s:g}s: the node's own timeout)"
    return replace(outcome, error=TaskError(ErrorKind.EXECUTION, said))


def _released(kept: Lease | None) -> TaskError:
    return TaskError(ErrorKind.RELEASED, "node is draining" if kept is None else "not asked for")


def _kind_of(outcome: TaskOutcome) -> ErrorKind:
    return outcome.error.kind if outcome.error is not None else ErrorKind.EXECUTION


def _log_timing(lease: Lease, outcome: TaskOutcome, timing: Timing, submit_s: float) -> None:
    """Where an accepted task's time went (benchmarks.scaling reads these lines)."""
    log.info(
        "task %s/%d timing: fetch %.3fs, load %.3fs, compute %.3fs, run %.3fs, submit %.3fs, cpu %.3fs",
        lease.task_id[:12],
        lease.attempt,
        timing.fetch_s,
        outcome.load_seconds,
        outcome.seconds,
        timing.run_s,
        submit_s,
        outcome.cpu_seconds,
    )
