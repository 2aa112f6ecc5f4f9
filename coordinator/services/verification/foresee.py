"""The referee's re-run of a check made before the result it checks comes: foresee.

An untrusted node's inference result is spot-checked by the referee alone (CheckPlan.direct),
on rows Verification.examine draws from the task's secret seed (task id and attempt), its policy
and the node's streak: nothing the result holds. So once the lease is granted, the referee can
re-run those rows while the node computes, and the ruling, when the result comes, only compares
(AheadRuns keeps the run under the key the ruling looks for: ahead.py). At a job's end the
last results' rulings used to re-run their rows one after another on the referee's one thread,
at its low priority, while the nodes sat idle: 0.3-0.4 s on a quiet machine, 5.6 s on a busy
one (benchmarks.scaling).

Nothing about a ruling changes: it takes the run only when it is the re-run it would make (same
model, check input, rows and settings), compares everyone with it as before, and runs the
soundness tests before blaming anyone as before. A node whose trust changed before its result
(other rows, or a check by a node), a lease given back or reissued, or a run that failed leave
the ruling to re-run as it always did.

Who could abuse it: a node leasing shards and giving them back makes the referee re-run a
check's rows per lease. Only a lease its node still holds when the referee gets to it is run
(rulings.leased_shard), one at a time, after every ruling waiting, FORESEEN at most queued (the
newest), at the referee's low priority: a lease costs the referee at most the run its result's
ruling would cost anyway. Nothing is sent to the node: it learns no row of its sample.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container
from pathlib import Path
from typing import Any

from coordinator.repositories.store import Store
from coordinator.repositories.verification.rulings import LeasedShard
from coordinator.services.runtime import Runtime
from coordinator.services.verification.ahead import AheadRuns, run_key
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.blobs import BlobStore
from tensorgrid.types import Lease
from tensorgrid.workloads import tensorfile

log = logging.getLogger("tensorgrid.coordinator.verification")
FORESEEN = 16  # leases queued at most (the newest kept; the older ones' rulings re-run as before)

Policies = Callable[[str], Awaitable[tuple[VerificationPolicy | None, int]]]
# (policy, node's streak, task id, attempt, task rows): the rows examine draws, None if unchecked
Draw = Callable[[VerificationPolicy, int, str, int, int], tuple[int, ...] | None]
# (model sha, task settings, input, output): the referee's re-run, in its sandboxed child
Run = Callable[[str, dict[str, Any], Path, Path], None]


def alone(policy: VerificationPolicy | None) -> bool:
    """Whether the policy has an untrusted node's results spot-checked (by the referee alone)."""
    return policy is not None and policy.enabled and policy.spec.mode == "spotcheck"


class Foresight:
    """Leases queued (leased) and their checks' rows re-run one at a time (next)."""

    def __init__(
        self,
        rt: Runtime,
        store: Store,
        blobs: BlobStore,
        ahead: AheadRuns,
        *,
        policies: Policies,
        known: Callable[[str], tuple[VerificationPolicy | None, int] | None],
        draw: Draw,
        run: Run,
        scored: Container[str],
    ) -> None:
        """known(job id): the job's policy if already read (no database); scored: task kinds whose
        rulings score a claim rather than re-run it (nothing to run ahead). Only leases of the kinds
        given to `add` are foreseen: job kinds whose untrusted results the referee checks alone."""
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self.ahead = ahead
        self._policies = policies
        self._known = known
        self._draw = draw
        self._run = run
        self._scored = scored
        self.queue: deque[tuple[str, str, int, str]] = deque(maxlen=FORESEEN)  # (job, task, attempt, node)
        self.kinds: set[str] = set()  # lease kinds foreseen (add)

    def add(self, lease_kind: str) -> None:
        """Foresee leases of this kind."""
        self.kinds.add(lease_kind)

    def leased(self, leases: list[Lease], node: str) -> bool:
        """Queue `node`'s leases of the kinds added (no database read on the lease path); whether any was."""
        queued = False
        for x in leases:
            known = self._known(x.job_id)
            if x.kind not in self.kinds or (known is not None and not alone(known[0])):
                continue
            self.queue.append((x.job_id, x.task_id, x.attempt, node))
            queued = True
        return queued

    async def next(self) -> bool:
        """Re-run the check rows of the oldest queued lease still held by its node, of a job whose
        policy has the referee check untrusted nodes alone, whose node is untrusted for the job,
        and whose draw checks it (as examine will); whether one was run (more may be queued)."""
        while self.queue:
            job_id, task_id, attempt, node = self.queue.popleft()
            policy, _ = await self._policies(job_id)
            if policy is None or not alone(policy):
                continue
            shard = await self.rt.db_bulk(self.store.verification.leased_shard, task_id, attempt, node)
            if shard is None or str(shard.settings.get("task_kind", "")) in self._scored:
                continue
            streak = await self.rt.db_bulk(self.store.verification.streak, node, job_id, policy.spec.trust_after)
            if streak >= policy.spec.trust_after:
                continue  # a trusted node's check, when drawn, goes to a node: its ruling is not certain
            rows = self._draw(policy, streak, task_id, attempt, shard.rows)
            if rows is None:
                continue
            started = time.monotonic()
            try:
                await self.rt.refereed(self.make, shard, rows)
            except Exception as e:  # noqa: BLE001 - a head start only: its ruling re-runs
                log.info("could not run the check of task %s ahead (its ruling will): %s", task_id[:12], e)
                return True
            log.info(  # benchmarks.scaling counts this time as the referee's
                "ran check of task %s ahead in %.3fs (%d rows)", task_id[:12], time.monotonic() - started, len(rows)
            )
            return True
        return False

    def make(self, shard: LeasedShard, rows: tuple[int, ...]) -> None:
        """The shard's `rows` gathered as examine gathers a check's input (the same bytes, so the
        same hash) and run through the model, kept under the ruling's key. The check input is not
        stored: examine stores it if the result is checked."""
        with tempfile.TemporaryDirectory(prefix="referee-", dir=self.blobs.tmp_dir) as tmp:
            source, out = Path(tmp) / "in.safetensors", Path(tmp) / "out.safetensors"
            tensorfile.gather_rows(self.blobs.path_for(shard.input_sha), list(rows), source)
            with source.open("rb") as f:
                input_sha = hashlib.file_digest(f, "sha256").hexdigest()
            key = run_key(shard.model_sha, input_sha, len(rows), shard.settings)
            if key in self.ahead:
                return
            self._run(shard.model_sha, shard.settings, source, out)
            self.ahead.put(key, out)
