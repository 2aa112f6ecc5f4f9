"""The inner learning rate at a step: a per-task linear warm-up times an optional job-wide cosine.

A task's AdamW starts fresh, so its warm-up counts the task's own steps (s = 0, 1, …). The
cosine runs over the whole job instead, continuing across rounds: a task of round r sits at
job-wide positions r·H + s of rounds·H, and the data-parallel baseline, which takes one step per
round-step, at its own step. Both are functions of the step alone, so an audit's replay from any
checkpoint agrees with the node.
"""

from __future__ import annotations

import math

__all__ = ["cosine_lr", "scheduled_lr"]


def cosine_lr(lr: float, final_lr: float, position: int, total: int) -> float:
    """From lr at position 0 down to final_lr at position total (and after), along half a cosine."""
    done = min(max(position, 0), total) / total if total > 0 else 1.0
    return lr - (lr - final_lr) * 0.5 * (1.0 - math.cos(math.pi * done))  # exactly lr at position 0


def scheduled_lr(
    lr: float, step: int, *, warmup_steps: int = 0, final_lr: float | None = None, position: int = 0, total: int = 0
) -> float:
    """The learning rate of a task's step `step` (0-based) at job-wide `position` of `total` steps.

    warmup_steps W > 0: × min(1, (step + 1) / W). final_lr None: no decay (lr throughout).
    """
    base = lr if final_lr is None else cosine_lr(lr, final_lr, position, total)
    return base * min(1.0, (step + 1) / warmup_steps) if warmup_steps else base
