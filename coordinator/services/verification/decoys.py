"""Decoys: ordinary tasks of exactly a check's m rows, carved out of a job's shards, so that a
node seeing an m-row task cannot tell whether it is a spot-check (policy.py, "Hiding a check's
size", has the reasoning and the figures).

The planner cuts the job's rows into T shards as before, then splits D of the pieces it can
spare (decoy_plan: the T - 1 shards that are always full, at most k per shard, each keeping
more than m rows) into m-row decoys plus the shard's remainder, at random places drawn from
the OS CSPRNG. Every row is in exactly one task and tasks stay in row order, so assembling the
outputs in task order is unchanged and no row is computed twice. A decoy is an ordinary task
in every way a node can see (random id, queued in its job's turn, checked like any task); the
coordinator alone records it (the `decoys` table) because it is paid by rows
(repositories/ledger/decoys.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

Draw = Callable[[int], int]  # randbelow(n): a uniform int in [0, n)


@dataclass(frozen=True)
class Piece:
    """A task's rows [start, end) of the job's input; decoy: carved to a check's size."""

    start: int
    end: int
    decoy: bool = False

    @property
    def rows(self) -> int:
        return self.end - self.start


def carve(rows: int, shard_rows: int, decoys: int, m: int, draw: Draw = secrets.randbelow) -> list[Piece]:
    """The job's tasks in row order: `rows` rows in shards of `shard_rows`, `decoys` of which
    m-row pieces are carved out of the T - 1 full shards (the last may be short), at most
    (shard_rows - m - 1) // m per shard. Raises ValueError when they do not fit (decoy_plan
    never asks for that)."""
    shards = [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)]
    per_shard = (shard_rows - m - 1) // m if m > 0 else 0
    if decoys <= 0:
        return [Piece(a, b) for a, b in shards]
    if per_shard <= 0 or (len(shards) - 1) * per_shard < decoys:
        raise ValueError(f"{decoys} decoys of {m} rows do not fit in {len(shards)} shards of {shard_rows} rows")
    counts = [0] * len(shards)
    for _ in range(decoys):  # each decoy to a uniformly drawn full shard with room left
        room = [i for i in range(len(shards) - 1) if counts[i] < per_shard]
        counts[room[draw(len(room))]] += 1
    pieces: list[Piece] = []
    for (start, end), k in zip(shards, counts, strict=True):
        rest = draw(k + 1)  # where among the shard's k + 1 pieces its remainder goes
        at = start
        for slot in range(k + 1):
            size = (end - start - k * m) if slot == rest else m
            pieces.append(Piece(at, at + size, decoy=slot != rest))
            at += size
    return pieces
