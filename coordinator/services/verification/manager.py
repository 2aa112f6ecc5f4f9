"""The verification ladder at run time: decide which results to check, build check tasks,
compare check outputs, referee disputes by re-executing the rows here, and keep
under-staked nodes away from jobs they could cheat on."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Connection, select

from coordinator.db import schema as s
from coordinator.repositories.store import Store
from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.verification.checks import CheckPlan, Verdict
from coordinator.repositories.verification.rulings import Ruling, RulingInfo
from coordinator.repositories.verification.store import CheckInfo
from coordinator.services.runtime import Runtime
from coordinator.services.verification.compare import load_rows, rows_match
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import BlobRef
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import load_program

log = logging.getLogger("tensorgrid.coordinator.verification")
STAKE_CACHE_S = 60.0
Settled = Callable[[str, bool], None]  # (job id, job complete): a ruling changed the job
# (model path, its loaded program, check input, output path, task settings): re-run a check's rows here
Replay = Callable[[Path, torch.nn.Module, Path, Path, dict[str, Any]], None]
REFEREE_IDLE_S = 1.0
REFEREE_PROGRAMS = 4


class Verification:
    """The runtime's database and work pool run repository calls and blob work off the event loop."""

    def __init__(
        self,
        rt: Runtime,
        store: Store,
        blobs: BlobStore,
        secret: bytes,
        stake_of: Callable[[str], int] | None,
    ) -> None:
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self._secret = secret  # row samples and check decisions are unpredictable to nodes
        self._db = rt.db
        self._work = rt.work
        self._stake_of = stake_of
        self._policies: dict[str, tuple[VerificationPolicy | None, int]] = {}
        self._stakes: dict[str, tuple[int, float]] = {}
        self._required: dict[str, int] = {}  # open job id → stake its nodes need (wei), when > 0
        self._required_until = 0.0
        self._disputes = asyncio.Event()
        self._torch = threading.Lock()  # torch.export.load is not thread-safe
        self._programs: dict[str, torch.nn.Module] = {}  # model sha → loaded program (a few, LRU)
        self._replays: dict[str, Replay] = {}  # task kind (settings["task_kind"]) → how the referee re-runs it
        self.rulings = 0

    async def policy(self, job_id: str, tasks_total: int = 0) -> tuple[VerificationPolicy | None, int]:
        """(policy or None, required stake in wei) of a job; policies never change, so cached."""
        cached = self._policies.get(job_id)
        if cached is not None:
            return cached
        stored = await self._db(self.store.verification.job_policy, job_id)
        if stored is None:
            out: tuple[VerificationPolicy | None, int] = (None, 0)
        else:
            job = await self._db(self.store.jobs.get_job, job_id)
            spec = VerificationSpec(**stored[0])
            out = (VerificationPolicy(spec, job.tasks_total, 0), stored[1])
        self._policies[job_id] = out
        return out

    async def examine(self, task: TaskRecord, node: str, output: BlobRef) -> tuple[CheckPlan | None, Verdict | None]:
        """For an inference result that passed the integrity rung: a check to open, or a verdict."""
        info = await self._db(self.store.verification.check_info, task.task_id)
        if info is not None:
            return None, await self._work(self._verdict, info, self.blobs.path_for(output.sha256))
        policy, _ = await self.policy(task.job_id)
        if policy is None or not policy.enabled:
            return None, None
        rep = await self._db(self.store.verification.reputation, node)
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

    # -- the referee: the coordinator re-executes disputed rows itself ------------------------

    def add_replay(self, task_kind: str, replay: Replay) -> None:
        """How the referee re-runs checks of tasks whose settings name `task_kind` (default: inference)."""
        self._replays[task_kind] = replay

    def dispute_raised(self) -> None:
        """A check result came in that may have opened a dispute: look for rulings to make now."""
        self._disputes.set()

    async def run_referee(self, settled: Settled) -> None:
        """Rule on disputed checks as they come (and those a previous run left pending)."""
        while True:
            try:
                await asyncio.wait_for(self._disputes.wait(), REFEREE_IDLE_S)
            except TimeoutError:
                pass
            self._disputes.clear()
            try:
                for info in await self._db(self.store.verification.pending_rulings):
                    await self._rule(info, settled)
            except Exception:  # a DB hiccup must not end the loop
                log.exception("ruling on disputed checks failed; will retry")

    async def _rule(self, info: RulingInfo, settled: Settled) -> None:
        now = self.rt.now_ms()
        try:
            ruling = await self._work(self._reexecute, info)
        except Exception as e:  # noqa: BLE001 - any failure to run means "cannot referee", never a verdict
            log.warning("cannot referee check %s: %s", info.check_id[:12], e)
            job_id = await self._db(self.store.verification.fail_ruling, info.check_id, f"{type(e).__name__}: {e}", now)
            if job_id:
                settled(job_id, False)
            return
        outcome = await self._db(self.store.verification.apply_ruling, info.check_id, ruling, now)
        self.rulings += 1
        if outcome is not None:
            log.info(
                "ruled on check %s: subject %s, wrong checkers %d",
                info.check_id[:12],
                "right" if ruling.subject_right else "wrong",
                len(info.checkers) - len(ruling.right_checkers),
            )
            settled(*outcome)

    def _reexecute(self, info: RulingInfo) -> Ruling:
        """Run the chain's rows (or the first rows_limit) through the job's model here; compare everyone."""
        rows = info.rows[: info.rows_limit] if info.rows_limit else info.rows
        head = list(range(len(rows)))
        with tempfile.TemporaryDirectory(prefix="referee-", dir=self.blobs.tmp_dir) as tmp:
            out = Path(tmp) / "out.safetensors"
            source = self.blobs.path_for(info.input_sha)
            if info.rows_limit:  # the check input's rows are a random sample already: take its head
                source = Path(tmp) / "in.safetensors"
                tensorfile.gather_rows(self.blobs.path_for(info.input_sha), head, source)
            self._run_model(info, source, out)
            ref = self.blobs.put_file(out)
        mine = load_rows(self.blobs.path_for(ref.sha256))
        if not mine:
            raise RuntimeError("the referee's own output could not be read")
        subject = load_rows(self.blobs.path_for(info.subject_output), rows)
        right = tuple(
            node for node, sha in info.checkers if rows_match(load_rows(self.blobs.path_for(sha), head), mine)
        )
        return Ruling(ref.sha256, rows_match(subject, mine), right)

    def _run_model(self, info: RulingInfo, source: Path, out: Path) -> None:
        model = self.blobs.path_for(info.model_sha)
        with self._torch:
            module = self._programs.pop(info.model_sha, None) or load_program(model, torch.device("cpu"))
            self._programs[info.model_sha] = module  # most recently used last
            while len(self._programs) > REFEREE_PROGRAMS:
                del self._programs[next(iter(self._programs))]
            replay = self._replays.get(str(info.settings.get("task_kind", "")), _replay_inference)
            replay(model, module, source, out, info.settings)

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

    def barred_jobs(self, conn: Connection, node: str) -> set[str]:
        """Open jobs whose required stake the node's cached stake does not cover.

        Runs inside the leasing transaction (on its connection: SQLite has one writer). The
        open jobs' requirements are re-read at most once a second.
        """
        if self._stake_of is None:
            return set()
        now = time.monotonic()
        if now >= self._required_until:
            p, j = s.job_policies.c, s.jobs.c
            rows = conn.execute(
                select(p.job_id, p.required_stake_wei)
                .join(s.jobs, j.job_id == p.job_id)
                .where(j.state.in_(("queued", "running")))
            ).all()
            self._required = {r.job_id: int(r.required_stake_wei or 0) for r in rows if int(r.required_stake_wei or 0)}
            self._required_until = now + 1.0
        stake = self._stakes.get(node, (0, 0.0))[0]
        return {job_id for job_id, required in self._required.items() if stake < required}


def _replay_inference(model: Path, module: torch.nn.Module, source: Path, out: Path, settings: dict[str, Any]) -> None:
    batch = int(settings.get("batch_size") or 0)
    run_inference(model, source, out, batch_size=batch, device="cpu", module=module)
