"""Canaries leased early: off the job's critical path, as hidden as before.

A canary re-runs a verified shard whole, its rows shuffled, on another node. It used to be
drawn when the result's check verified, so a canary drawn on a job's last shard made the job
wait one more shard's compute after its last result (benchmarks.scaling: 14 s of a 35 s run),
while a node that finished first sat idle.

Now the draw (EarlyCanaries.order: from the coordinator's secret, the task id and the
attempt, the same probability canary_rate per checked result) is made when the shard is leased,
and where the result's check is certain (the node is untrusted for the job: checked at rate 1)
the canary's task is leased at once to a drawn node that is not the lease's, so an idle node
runs it while the job still has work. Its check row waits (repositories/verification/
canaries.py: AHEAD) until the result's check verifies, then opens as it would have then; an
output its checker sent meanwhile is parked and compared here (compare_parked). A trusted
node's canary is prepared when its result is checked and leased when the check verifies, as
before. What a node sees does not change: the same fresh id, full size, shuffled input and
place in its job's turn; only when it is leased, which now looks more like any shard's lease.

Who could abuse it: a node that leases shards and lets them lapse makes canaries of its leases
(at canary_rate) run on other nodes for nothing: each is void when the shard is leased again,
so a lapse costs one canary at most, at the job's canary_rate, as its lapsed lease costs the job.
A node still learns nothing earlier of its own shard's canary: it never sees it, and a check of
its result is drawn as before. A ring-mate drawn as the canary's checker recognises a shard it
knows by content, as before (a canary never held against that).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
from collections.abc import Awaitable, Callable

from coordinator.repositories.store import Store
from coordinator.repositories.verification.checks import CheckPlan, Verdict
from coordinator.repositories.verification.store import CheckInfo
from coordinator.services.runtime import Runtime
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.blobs import BlobStore
from tensorgrid.types import BlobRef, Lease

log = logging.getLogger("tensorgrid.coordinator.verification")
Policies = Callable[[str], Awaitable[tuple[VerificationPolicy | None, int]]]
Settled = Callable[[str, bool], None]


def fresh_id(secret: bytes, what: str, task_id: str, attempt: int) -> str:
    """A check's or canary's task id for a task's lease: no node can tell it from an ordinary
    task's (those are random too); the coordinator derives it again from the lease."""
    return hmac.new(secret, f"{what}:{task_id}:{attempt}".encode(), hashlib.sha256).hexdigest()


class EarlyCanaries:
    """Lease the canaries of shards whose checks are certain with the shards (leased), and
    compare outputs that came before their canaries were armed (compare_parked)."""

    def __init__(
        self,
        rt: Runtime,
        store: Store,
        blobs: BlobStore,
        *,
        secret: bytes,
        policies: Policies,
        gather: Callable[[BlobRef, list[int]], BlobRef],
        verdict: Callable[[CheckInfo, str, str], Verdict],
    ) -> None:
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self._secret = secret  # the draw is unpredictable to nodes
        self._policies = policies
        self._gather = gather
        self._verdict = verdict
        self.kinds: set[str] = set()  # lease kinds whose canaries may be leased early (add)

    def add(self, lease_kind: str) -> None:
        self.kinds.add(lease_kind)

    def order(self, policy: VerificationPolicy, task_id: str, attempt: int, task_rows: int) -> tuple[int, ...] | None:
        """Whether a checked result of this lease gets a canary (canary_rate), and its input's row
        order (the shard's rows shuffled); None: no canary. From the coordinator's secret, the task
        id and the attempt, so the lease (here) and Verification.examine draw the same canary."""
        if task_rows <= 1:
            return None
        rng = random.Random(hmac.new(self._secret, f"canary:{task_id}:{attempt}".encode(), hashlib.sha256).digest())
        if rng.random() >= policy.spec.canary_rate:
            return None
        order = rng.sample(range(task_rows), task_rows)
        if order == sorted(order):  # a shuffle that left the rows in place: the same hash
            order = order[1:] + order[:1]
        return tuple(order)

    def canary_id(self, task_id: str, attempt: int) -> str:
        return fresh_id(self._secret, "canary", task_id, attempt)

    def leased(self, leases: list[Lease], node: str) -> None:
        """`node`'s new leases (after their commit): their canaries, if drawn, are leased in the background."""
        mine = [x for x in leases if x.kind in self.kinds]
        if mine:
            self.rt.spawn(self._lease(mine, node))

    async def _lease(self, leases: list[Lease], node: str) -> None:
        for x in leases:
            try:
                await self._lease_one(x, node)
            except Exception:  # noqa: BLE001 - an early lease is a head start: the canary follows its check
                log.warning("could not lease the canary of task %s early", x.task_id[:12], exc_info=True)

    async def _lease_one(self, x: Lease, node: str) -> None:
        if x.attempt > 1:  # leased again: a canary of an earlier lease has nothing to follow
            await self.rt.db(self.store.verification.void_canaries, x.job_id, x.task_id, x.attempt)
        policy, _ = await self._policies(x.job_id)
        if policy is None or not policy.enabled:
            return
        order = self.order(policy, x.task_id, x.attempt, x.rows)
        if order is None:
            return
        streak = await self.rt.db(self.store.verification.streak, node, x.job_id, policy.spec.trust_after)
        if policy.check_rate(streak) < 1.0:
            return  # the result may go unchecked: its canary is prepared with its check, as before
        shuffled = await self.rt.work(self._gather, x.input, list(order))
        plan = CheckPlan(self.canary_id(x.task_id, x.attempt), shuffled, order)
        if await self.rt.db(
            self.store.verification.lease_canary_early, x.task_id, x.attempt, node, plan, self.rt.now_ms()
        ):
            log.info("leased the canary of task %s early", x.task_id[:12])
            self.rt.hub.work_available(1)  # for its drawn checker

    async def unchecked(self, job_id: str, task_id: str, attempt: int, policy: VerificationPolicy, rows: int) -> None:
        """The result of lease `attempt` goes unchecked (a node trusted meanwhile): a canary
        leased early for it is void."""
        if self.order(policy, task_id, attempt, rows) is not None:
            canary_id = self.canary_id(task_id, attempt)
            await self.rt.db(self.store.verification.void_canaries, job_id, task_id, attempt, canary_id)

    async def compare_parked(self, settled: Settled) -> bool:
        """Compare armed canaries' parked outputs with their subjects'; whether any was."""
        parked = await self.rt.db_bulk(self.store.verification.parked_canaries)
        for info, checker, output in parked:
            verdict = await self.rt.work(self._verdict, info, output, checker)
            done = await self.rt.db(
                self.store.verification.settle_parked, info.check_id, checker, output, verdict, self.rt.now_ms()
            )
            if done is not None:
                settled(*done)
        return bool(parked)
