"""Stake gating: a node whose stake on chain does not cover a job's required stake is not
leased that job's tasks (the stake a cheater would lose must outweigh what cheating gains;
docs/API.md, the escrow rule).

Stakes are read from the chain before a node leases, at most once a minute per node, and kept;
a chain that does not answer keeps the last known stake, so a hiccup never stops leasing. The
open jobs' requirements are read inside the leasing transaction, at most once a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Connection, select

from coordinator.db import schema as s

log = logging.getLogger("tensorgrid.coordinator.verification")
STAKE_CACHE_S = 60.0
REQUIRED_CACHE_S = 1.0


class StakeGate:
    def __init__(self, stake_of: Callable[[str], int], work: Callable[..., Awaitable[Any]]) -> None:
        """stake_of: a node's stake in wei, read from the chain (blocking: run on `work`, the
        runtime's work threads)."""
        self._stake_of = stake_of
        self._work = work
        self._stakes: dict[str, tuple[int, float]] = {}  # node → (stake wei, read again after)
        self._required: dict[str, int] = {}  # open job id → stake its nodes need (wei), when > 0
        self._required_until = 0.0

    async def refresh(self, node: str) -> None:
        """Read the node's on-chain stake into the cache (at most once a minute per node)."""
        cached = self._stakes.get(node)
        if cached is not None and cached[1] > time.monotonic():
            return
        try:
            stake = int(await self._work(self._stake_of, node))
        except Exception:  # a chain hiccup must not stop leasing: keep the last known stake
            log.warning("could not read the stake of %s", node, exc_info=True)
            stake = cached[0] if cached else 0
        self._stakes[node] = (stake, time.monotonic() + STAKE_CACHE_S)

    def known(self, node: str) -> int | None:
        """The node's stake as last read from the chain (when it last leased); None: never read."""
        cached = self._stakes.get(node)
        return None if cached is None else cached[0]

    def barred_jobs(self, conn: Connection, node: str) -> set[str]:
        """Open jobs whose required stake the node's cached stake does not cover. Runs inside the
        leasing transaction (on its connection: SQLite has one writer)."""
        now = time.monotonic()
        if now >= self._required_until:
            p, j = s.job_policies.c, s.jobs.c
            rows = conn.execute(
                select(p.job_id, p.required_stake_wei)
                .join(s.jobs, j.job_id == p.job_id)
                .where(j.state.in_(("queued", "running")))
            ).all()
            self._required = {r.job_id: int(r.required_stake_wei or 0) for r in rows if int(r.required_stake_wei or 0)}
            self._required_until = now + REQUIRED_CACHE_S
        stake = self._stakes.get(node, (0, 0.0))[0]
        return {job_id for job_id, required in self._required.items() if stake < required}
