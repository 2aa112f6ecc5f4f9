"""The verification ladder at run time: decide which results to check, build check tasks,
compare check outputs, and keep under-staked nodes away from jobs they could cheat on."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, select

from coordinator.storage import State, TaskRecord
from coordinator.verification.compare import load_rows, rows_match
from coordinator.verification.policy import VerificationPolicy
from coordinator.verification.records import CHECK_KIND, CheckPlan, Verdict
from coordinator.verification.schema import job_policies
from coordinator.verification.store import CheckInfo
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import BlobRef
from tensorgrid.workloads import tensorfile

log = logging.getLogger("tensorgrid.coordinator.verification")
T = TypeVar("T")
STAKE_CACHE_S = 60.0
Runner = Callable[..., Awaitable[Any]]


class Verification:
    """Owned by the Coordinator; `db` and `work` run state and blob work off the event loop."""

    def __init__(
        self,
        state: State,
        blobs: BlobStore,
        secret: bytes,
        db: Runner,
        work: Runner,
        stake_of: Callable[[str], int] | None,
    ) -> None:
        self.state = state
        self.blobs = blobs
        self._secret = secret  # row samples and check decisions are unpredictable to nodes
        self._db = db
        self._work = work
        self._stake_of = stake_of
        self._policies: dict[str, tuple[VerificationPolicy | None, int]] = {}
        self._stakes: dict[str, tuple[int, float]] = {}
        self._required: dict[str, int] = {}  # job id → stake its nodes need (wei)

    async def policy(self, job_id: str, tasks_total: int = 0) -> tuple[VerificationPolicy | None, int]:
        """(policy or None, required stake in wei) of a job; policies never change, so cached."""
        cached = self._policies.get(job_id)
        if cached is not None:
            return cached
        stored = await self._db(self.state.job_policy, job_id)
        if stored is None:
            out: tuple[VerificationPolicy | None, int] = (None, 0)
        else:
            job = await self._db(self.state.get_job, job_id)
            spec = VerificationSpec(**stored[0])
            out = (VerificationPolicy(spec, job.tasks_total, 0), stored[1])
        self._policies[job_id] = out
        return out

    async def examine(self, task: TaskRecord, node: str, output: BlobRef) -> tuple[CheckPlan | None, Verdict | None]:
        """For an inference result that passed the integrity rung: a check to open, or a verdict."""
        info = await self._db(self.state.check_info, task.task_id)
        if info is not None:
            return None, await self._work(self._verdict, info, self.blobs.path_for(output.sha256))
        policy, _ = await self.policy(task.job_id)
        if policy is None or not policy.enabled:
            return None, None
        rep = await self._db(self.state.reputation, node)
        rng = self._rng(task.task_id, task.attempt)
        rate = policy.check_rate(rep.consecutive_valid)
        if rng.random() >= rate:
            return None, None  # a trusted node's lucky draw: accepted (and paid) unchecked
        m = policy.sample_rows(rate, task.rows)
        rows = tuple(sorted(rng.sample(range(task.rows), m)))
        ref = await self._work(self._gather, task.input, list(rows))
        check_id = hmac.new(self._secret, f"check:{task.task_id}:{task.attempt}".encode(), hashlib.sha256).hexdigest()
        return CheckPlan(check_id, ref, rows), None

    def _rng(self, task_id: str, attempt: int) -> random.Random:
        seed = hmac.new(self._secret, f"sample:{task_id}:{attempt}".encode(), hashlib.sha256).digest()
        return random.Random(seed)

    def _gather(self, source: BlobRef, rows: list[int]) -> BlobRef:
        tmp = self.blobs.temp_path("check-")
        try:
            tensorfile.gather_rows(self.blobs.path_for(source.sha256), rows, tmp)
            return self.blobs.put_file(tmp)
        finally:
            os.unlink(tmp)

    def _verdict(self, info: CheckInfo, output: Path) -> Verdict:
        mine = load_rows(output)
        subject = load_rows(self.blobs.path_for(info.subject_output), info.rows)
        agrees = bool(mine) and rows_match(subject, mine)
        peers = tuple(
            node for node, sha in info.earlier if bool(mine) and rows_match(load_rows(self.blobs.path_for(sha)), mine)
        )
        return Verdict(agrees, peers)

    # -- economic security: stake gating ------------------------------------------------------

    async def refresh_stake(self, node: str) -> None:
        """Read the node's on-chain stake into the cache (at most once a minute per node)."""
        if self._stake_of is None:
            return
        cached = self._stakes.get(node)
        if cached is not None and cached[1] > time.monotonic():
            return
        try:
            stake = int(await self._work(self._stake_of, node))
        except Exception:  # a chain hiccup must not stop leasing: keep the last known stake
            log.warning("could not read the stake of %s", node, exc_info=True)
            stake = cached[0] if cached else 0
        self._stakes[node] = (stake, time.monotonic() + STAKE_CACHE_S)

    def may_lease(self, conn: Connection, node: str, job_id: str) -> bool:
        """Whether the node's cached stake covers the job's required stake.

        Runs inside the leasing transaction (on its connection: SQLite has one writer).
        """
        if self._stake_of is None:
            return True
        required = self._required.get(job_id)
        if required is None:
            value = conn.execute(
                select(job_policies.c.required_stake_wei).where(job_policies.c.job_id == job_id)
            ).scalar()
            required = self._required[job_id] = int(value or 0)
        return required == 0 or self._stakes.get(node, (0, 0.0))[0] >= required


def is_check_kind(kind: str) -> bool:
    return kind == CHECK_KIND
