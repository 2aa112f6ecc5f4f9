"""Sampled checks of served requests: another replica, or the coordinator's referee, answers
again, and a node proven wrong gets the consequences of a batch check (docs/SERVING.md).

The draw: each answered request is checked with probability spec.check_rate, decided by an
HMAC of the coordinator's verification secret over (endpoint, replica, request id), so a node
can neither predict nor influence which of its answers are checked, and the same request is
always drawn the same way.

A request that is itself a check's rerun (ServedRequest.rerun) is never drawn: checks do not
recurse. A drawn request is checked in the background (at most `concurrency` reruns at a time,
at most `max_waiting` checks under way; beyond that a draw is dropped and counted, never
blocking the router):
1. `rerun` sends its input to a ready replica on another node. The same answer (the batch
   checks' tolerances, CUDA's when either side ran on CUDA) verifies both nodes only when
   both are trusted for the endpoint (served.untrusted: the batch checks' rule); else
   the referee confirms the agreement, so one operator's two replicas cannot agree on a lie.
2. Otherwise (no other replica, a different answer, or an agreement to confirm) the referee
   runs the request itself (sandboxed, on CPU; with the other checks of the last few hundred
   ms in one call to its child, each request still run alone: referee_batches). Whoever's
   answer differs from the referee's is wrong, both possibly. Before blaming, the referee's
   run must be sound: the same answer twice (no randomness), and, for inference, the same
   rows when the request runs with its batch-mates as the replica ran it (rows independent
   of their batch). Otherwise nobody is blamed.
3. The node proven wrong: caught (reputation, a "caught" event), its batch voided by
   accounting, the router's `on_caught` (release, bar), and on a chain a slash queued with
   the batch's signed receipt as evidence. A wrong checking replica likewise, with the
   receipt of the micro-batch its rerun ran in (Reran.receipted; its batch-mates make the
   same soundness test); if that receipt never verified, it is caught and barred, not slashed.
A referee that cannot run (a limit, a CUDA-only program) decides nothing: no one is blamed,
and an agreement it should have confirmed verifies no one.

A check is on no caller's path, and it yields to those that are: its transactions run on the
database thread (Runtime.db_bulk), never inline on the event loop that answers calls (on
SQLite, Runtime.db would run them there: ~2.5 ms of each check the loop answered nothing),
and the referee's child runs at a lower CPU priority (runtime.REFEREE_NICE).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, replace

from coordinator.repositories.store import Store
from coordinator.repositories.verification import served
from coordinator.services.runtime import Runtime
from coordinator.services.serving import rerun as referee
from coordinator.services.serving.hooks import Accounting, OnCaught, Reran, Rerun, ServedBatch, ServedRequest
from coordinator.services.serving.referee_batches import RefereeBatches
from coordinator.services.verification.compare import rows_match
from tensorgrid.blobs import BlobStore
from tensorgrid.serving import trace
from tensorgrid.spec import EndpointSpec
from tensorgrid.types import Receipt

log = logging.getLogger("tensorgrid.coordinator.serving")
CONCURRENCY = 2
MAX_WAITING = 256
VERIFIED_FLUSH_S = 1.0  # verified verdicts are written together this often
FACTS_TTL_S = 10.0  # a node's device kind and an untrusted verdict are looked up again after this
MAX_REMEMBERED = 4096  # past this many remembered facts, the expired ones are dropped
RECEIPT_WAIT_S = 10.0  # the router resolves a rerun's receipt sooner (links.RECEIPT_WAIT_S + 1)


@dataclass
class _Counts:
    checked: int = 0
    caught: int = 0


class Checks:
    """serving.hooks.Checks: sampled requests re-run by another replica or the referee."""

    def __init__(
        self,
        rt: Runtime,
        store: Store,
        blobs: BlobStore,
        secret: bytes,
        accounting: Accounting,
        rerun: Rerun | None,
        on_caught: OnCaught | None,
        *,
        concurrency: int = CONCURRENCY,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        """secret: the coordinator's verification secret (nodes never see it). rerun and
        on_caught are the router's (Router.rerun, Router.on_caught); as the router takes this
        object in its constructor, pass lambdas that reach it once built. rerun None: every
        check goes to the referee."""
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self._secret = secret
        self.accounting = accounting
        self.rerun = rerun
        self.on_caught = on_caught
        self.batches = RefereeBatches(rt, blobs)  # the referee's answers, several per call to its child
        self._slots = asyncio.Semaphore(concurrency)
        self._max_waiting = max_waiting
        self._waiting = 0
        self._counts: dict[str, _Counts] = {}
        self._verified: list[tuple[list[str], str]] = []  # verdicts not written yet (flush)
        self._kinds: dict[str, tuple[str, float]] = {}  # node: (device kind, known until)
        self._untrusted: dict[tuple[str, str], float] = {}  # (endpoint, node): known untrusted until
        # grid-wide totals, plain ints (the metrics read them at scrape time)
        self.verified = 0  # checks that verified the node that answered
        self.caught = 0  # nodes caught: answering nodes and checking replicas
        self.dropped = 0  # draws not checked: too many waiting
        self.unverified = 0  # checks that decided nothing (the referee could not run, or unsound)

    # ---- the router's calls -------------------------------------------------------------------
    def after_batch(self, batch: ServedBatch, spec: EndpointSpec) -> None:
        """Draw the batch's answered requests at spec.check_rate; start their checks (never blocks)."""
        if spec.check_rate <= 0:
            return
        for index, request in enumerate(batch.requests):
            if request.rerun or not request.ok:
                continue
            if self.draw(batch.endpoint_id, batch.replica_id, request.request_id) >= spec.check_rate:
                continue
            if self._waiting >= self._max_waiting:
                self.dropped += 1
                continue
            self._waiting += 1
            self.rt.spawn(self._check(batch, index, spec))

    def counts(self, endpoint_id: str) -> tuple[int, int]:
        """(requests checked, requests caught) of the endpoint."""
        c = self._counts.get(endpoint_id, _Counts())
        return c.checked, c.caught

    async def run(self, stop: asyncio.Event) -> None:
        """Write the verified verdicts every VERIFIED_FLUSH_S until `stop` is set, then once more."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), VERIFIED_FLUSH_S)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        """Write the verified verdicts decided since the last flush, in one transaction.

        One transaction a second instead of one a check: a transaction is ~1.5 ms of the
        coordinator's CPU, and the calls answered meanwhile waited for it (docs/SERVING.md).
        A verdict extends a streak, which only ever delays trust: a catch writes the verdicts
        before it first, so the order of a node's verdicts is kept."""
        if not self._verified:
            return
        pending, self._verified = self._verified, []
        try:
            await self.rt.db_bulk(self._record_verified, pending)
        except Exception:  # kept for the next flush (a retried bump only delays trust)
            log.exception("writing %d verified checks failed; will retry", len(pending))
            self._verified[:0] = pending

    def draw(self, endpoint_id: str, replica_id: str, request_id: int) -> float:
        """A number in [0, 1) only the secret's holder can compute: checked when below the rate."""
        message = f"serve-check:{endpoint_id}:{replica_id}:{request_id}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    # ---- one check ----------------------------------------------------------------------------
    async def _check(self, batch: ServedBatch, index: int, spec: EndpointSpec) -> None:
        started = time.perf_counter_ns()
        try:
            await self._run(batch, index, spec)
        except Exception:  # a check that breaks decides nothing; the router goes on
            self.unverified += 1
            log.exception("check of request %s on endpoint %s failed", batch.requests[index].request_id,
                          batch.endpoint_id[:12])  # fmt: skip
        finally:
            self._waiting -= 1
            trace.span("c.check", batch.node[:8], started)

    async def _run(self, batch: ServedBatch, index: int, spec: EndpointSpec) -> None:
        request = batch.requests[index]
        async with self._slots:  # not held while the referee's batch gathers (referee_batches)
            started = time.perf_counter_ns()
            other = await self._rerun(batch, request)
            trace.span("c.rerun", request.request_id, started)
            other_class = "cpu"
            if other is not None:
                other_kind, untrusted = await self._facts(batch.endpoint_id, batch.node, other.node)
                other_class = _device_class(batch.device_kind, other_kind)
                theirs = referee.parse(other.output)
                agreed = theirs is not None and referee.answers_match(theirs, request.output, other_class)
                if agreed and not untrusted:  # both trusted: their agreement verifies them
                    await self._verdict(batch, [batch.node, other.node])
                    return
        started = time.perf_counter_ns()
        try:
            truth = await self.batches.answer(spec, request)
            trace.span("c.referee", request.request_id, started)
        except Exception as e:  # noqa: BLE001 - the referee could not run: no verdict, nobody blamed
            self.unverified += 1
            log.warning("the referee could not re-run request %s of endpoint %s: %s", request.request_id,
                        batch.endpoint_id[:12], e)  # fmt: skip
            return
        subject_right = referee.answers_match(truth, request.output, _device_class(batch.device_kind))
        other_right = other is None or referee.answers_match(truth, other.output, other_class)
        if not (subject_right and other_right):
            why = await self.rt.refereed(self._unsound, spec, batch, index, truth)
            if why:
                self.unverified += 1
                log.warning("endpoint %s: no one blamed for request %s: %s", batch.endpoint_id[:12],
                            request.request_id, why)  # fmt: skip
                return
        right = [batch.node] if subject_right else []
        if other is not None and other_right:
            right.append(other.node)
        await self._verdict(batch, right)
        if not subject_right:
            await self._caught(batch, index, truth, "the answer differs from the coordinator's re-execution")
        if other is not None and not other_right:
            await self._caught_checker(batch, other, truth, spec)

    async def _rerun(self, batch: ServedBatch, request: ServedRequest) -> Reran | None:
        if self.rerun is None:
            return None
        try:
            return await self.rerun(batch.endpoint_id, request.input, request.seed, batch.node)
        except Exception as e:  # noqa: BLE001 - no other replica's answer: the referee decides alone
            log.info("rerun of request %s failed: %s", request.request_id, e)
            return None

    def _unsound(self, spec: EndpointSpec, batch: ServedBatch, index: int, truth: referee.Tensors) -> str:
        """Why the referee's answer may not blame anyone ("" when it may)."""
        again = referee.run_request(self.rt, self.blobs, spec, batch.requests[index])
        if not rows_match(truth, again):
            return "running the request twice gave different answers (random operators or nondeterminism)"
        return self._row_dependent(spec, batch, index, truth)

    def _row_dependent(self, spec: EndpointSpec, batch: ServedBatch, index: int, truth: referee.Tensors) -> str:
        """Why the request's rows, run with its batch-mates, may differ honestly ("" if they may not)."""
        if spec.serves == "inference":
            batched = referee.run_in_batch(self.rt, self.blobs, spec, batch.requests, index)
            if batched is not None and not rows_match(truth, batched):
                return "the request's rows differ when run with its batch-mates: rows must be independent"
        return ""

    # ---- verdicts -----------------------------------------------------------------------------
    async def _verdict(self, batch: ServedBatch, right: list[str]) -> None:
        """One check decided: the nodes proven right have their streak extended."""
        counts = self._count(batch.endpoint_id)
        counts.checked += 1
        if batch.node in right:
            self.verified += 1
        if right:  # written with the others of the last VERIFIED_FLUSH_S (flush)
            self._verified.append((right, batch.endpoint_id))

    async def _caught(self, batch: ServedBatch, index: int, truth: referee.Tensors, reason: str) -> None:
        self._count(batch.endpoint_id).caught += 1
        self.caught += 1
        log.warning("node %s caught on endpoint %s (batch %s): %s", batch.node, batch.endpoint_id[:12], batch.batch,
                    reason)  # fmt: skip
        self.accounting.void(batch, reason)  # in memory first: unpaid, then released, whatever the DB does
        if self.on_caught is not None:
            self.on_caught(batch, reason)
        correct = referee.corrected_digest(batch.requests, index, truth)
        await self.flush()  # a node's earlier verified answers come before its catch (it resets the streak)
        await self.rt.db_bulk(self._record_caught, batch.node, batch.endpoint_id, batch.receipt, correct, reason)

    async def _caught_checker(
        self, batch: ServedBatch, other: Reran, truth: referee.Tensors, spec: EndpointSpec
    ) -> None:
        """The replica that re-ran the request answered wrong: caught like an answering node,
        with the receipt of the micro-batch its rerun ran in; barred only, if it has none."""
        reason = "its rerun of a sampled request differs from the coordinator's re-execution"
        theirs = await _receipted(other)
        if theirs is None:
            log.warning("node %s caught on endpoint %s (no receipt over its rerun): %s", other.node,
                        batch.endpoint_id[:12], reason)  # fmt: skip
            self._count(batch.endpoint_id).caught += 1
            self.caught += 1
            if self.on_caught is not None:  # the router reads the endpoint and the node
                request = replace(batch.requests[0], request_id=other.request_id, output=other.output, rerun=True)
                self.on_caught(ServedBatch(batch.endpoint_id, "", other.node, "", -1, _NO_RECEIPT, (request,)), reason)
            await self.flush()
            await self.rt.db_bulk(self._record_caught, other.node, batch.endpoint_id, None, "", reason)
            return
        at = theirs.index_of(other.request_id)
        why = await self.rt.refereed(self._row_dependent, spec, theirs, at, truth)
        if why:  # its batch-mates may explain its answer: it is not blamed
            log.warning("endpoint %s: checker %s not blamed: %s", batch.endpoint_id[:12], other.node, why)
            return
        await self._caught(theirs, at, truth, reason)

    def _count(self, endpoint_id: str) -> _Counts:
        return self._counts.setdefault(endpoint_id, _Counts())

    async def _facts(self, endpoint_id: str, subject: str, checker: str) -> tuple[str, bool]:
        """The checking node's device kind, and whether either node is untrusted for the
        endpoint (their agreement then needs the referee: served.untrusted). Both are
        remembered for FACTS_TTL_S, an untrusted verdict only: trust grows by verified checks
        alone, so until the next look the referee confirms agreements it might have skipped
        (more work, never a wrong verdict), while a trusted node is looked up every time (it
        may have been caught since). One transaction when they must be read, none when known:
        a check's transactions are CPU the coordinator's calls wait for (docs/SERVING.md)."""
        now = time.monotonic()
        kind, kind_until = self._kinds.get(checker, ("", 0.0))
        known_untrusted = any(self._untrusted.get((endpoint_id, n), 0.0) > now for n in (subject, checker))
        if kind_until > now and known_untrusted:
            return kind, True
        kind, untrusted = await self.rt.db_bulk(self._read_facts, endpoint_id, subject, checker)
        if len(self._untrusted) > MAX_REMEMBERED or len(self._kinds) > MAX_REMEMBERED:
            self._untrusted = {k: t for k, t in self._untrusted.items() if t > now}
            self._kinds = {k: v for k, v in self._kinds.items() if v[1] > now}
        self._kinds[checker] = (kind, now + FACTS_TTL_S)
        for node in untrusted:
            self._untrusted[(endpoint_id, node)] = now + FACTS_TTL_S
        return kind, bool(untrusted)

    # ---- database (each its own transaction) --------------------------------------------------
    def _read_facts(self, endpoint_id: str, subject: str, checker: str) -> tuple[str, list[str]]:
        with self.store.engine.connect() as conn:
            return served.device_kind(conn, checker), served.untrusted(conn, endpoint_id, [subject, checker])

    def _record_verified(self, verdicts: list[tuple[list[str], str]]) -> None:
        with self.store.engine.begin() as conn:
            for nodes, endpoint_id in verdicts:
                served.record_verified(conn, nodes, endpoint_id)

    def _record_caught(self, node: str, endpoint_id: str, receipt: Receipt | None, correct: str, reason: str) -> bool:
        with self.store.engine.begin() as conn:
            return served.record_caught(
                conn,
                node=node,
                endpoint_id=endpoint_id,
                receipt=receipt,
                correct_output_hash=correct,
                reason=reason,
                now_ms=self.rt.now_ms(),
            )


async def _receipted(other: Reran) -> ServedBatch | None:
    """The rerun's micro-batch once its receipt verified; None if it never does."""
    if other.receipted is None:
        return None
    try:
        return await asyncio.wait_for(asyncio.shield(other.receipted), RECEIPT_WAIT_S)
    except TimeoutError:
        return None


_NO_RECEIPT = Receipt(job_id="0" * 64, task_id="0" * 64, attempt=0, input_hash="0" * 64, output_hash="0" * 64)


def _device_class(*kinds: str) -> str:
    """CUDA's tolerance when any side ran on CUDA (the referee runs on CPU)."""
    return "cuda" if any(k.startswith("cuda") for k in kinds) else "cpu"
