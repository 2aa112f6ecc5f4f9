"""noop: tasks that do nothing, for measuring the grid's own dispatch overhead."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from tensorgrid.spec.base import GiB, JobSpecBase


@dataclass(frozen=True, kw_only=True)
class NoopSpec(JobSpecBase):
    """Tasks that do nothing: for measuring the grid's own dispatch overhead."""

    tasks: int
    task_memory_limit_bytes: int = GiB
    task_time_limit_s: int = 60
    kind: str = "noop"

    INT_RANGES: ClassVar[Mapping[str, tuple[int, int]]] = {"tasks": (1, 1_000_000)}
