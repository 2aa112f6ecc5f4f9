"""What a training audit replays and what it found: the coordinator builds an AuditCase and
reads a Finding, its sandboxed child runs the replay (coordinator.services.training.replay).
No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tensorgrid.training.inner import InnerSettings

__all__ = ["AuditCase", "Finding", "reveal_plan"]


@dataclass(frozen=True)
class AuditCase:
    """Everything one audit needs, as local files."""

    program: Path
    shard: Path
    weights: Path  # the round's global weights
    result: Path  # the node's pseudo-gradient file
    settings: InnerSettings
    commitment: str  # what the receipt signed
    segment: int  # replay from step 0 to checkpoint_steps[segment + 1]
    revealed: dict[int, Path] = field(default_factory=dict)  # step → revealed model part


@dataclass(frozen=True)
class Finding:
    passed: bool
    reason: str = ""
    evidence: str = ""  # hex sha256 of what the coordinator computed (for a slash)
    replay_seconds: float = 0.0


def reveal_plan(marks: list[int], segment: int) -> list[int]:
    """Checkpoint steps whose model part a node must reveal for `segment`: the replay's end; none
    when the replay runs to the end (the pseudo-gradient is its check). The last checkpoint is
    never revealed: the coordinator rebuilds it from the pseudo-gradient (final_model_part)."""
    if not 0 <= segment < len(marks) - 1:
        raise ValueError(f"segment {segment} is not between two of {len(marks)} checkpoints")
    end = marks[segment + 1]
    return [] if end == marks[-1] else [end]
