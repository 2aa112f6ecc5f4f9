"""A training task's inner settings: everything it needs besides its three files (the train
program, the round's weights, its shard); they travel as Task.settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tensorgrid.errors import ExecutionError
from tensorgrid.spec import COMPRESSIONS, LOSSES, TrainingSpec
from tensorgrid.training.data import derive_seed
from tensorgrid.training.schedule import scheduled_lr
from tensorgrid.types import ErrorKind

__all__ = ["InnerSettings"]

# settings a task may leave out (their defaults)
_OPTIONAL = frozenset({"device", "warmup_steps", "compression", "final_lr", "schedule_start", "schedule_steps"})


@dataclass(frozen=True)
class InnerSettings:
    """Everything a training task needs besides its three files; travels as Task.settings."""

    loss: str
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    eps: float
    steps: int
    batch_size: int
    seed: int
    checkpoint_every: int
    device: str = "cpu"
    warmup_steps: int = 0  # step s trains at lr·min(1, (s+1)/warmup_steps)
    compression: str = "int8"  # of the pseudo-gradient, which the last checkpoint digest commits
    # With final_lr, lr decays along a cosine over the job's schedule_steps inner steps (rounds × H),
    # to final_lr; this task's step s is the job's step schedule_start + s (round × H + s).
    final_lr: float | None = None
    schedule_start: int = 0
    schedule_steps: int = 0

    @classmethod
    def for_task(cls, spec: TrainingSpec, round: int, worker: int, device: str = "cpu") -> InnerSettings:
        """Settings of worker `worker` in round `round`; its seed is derived, never chosen by a node."""
        opt = spec.inner_optimizer
        return cls(
            loss=spec.loss,
            lr=opt.lr,
            betas=opt.betas,
            weight_decay=opt.weight_decay,
            eps=opt.eps,
            steps=spec.inner_steps,
            batch_size=spec.batch_size,
            seed=derive_seed(spec.seed, "task", round, worker),
            checkpoint_every=spec.checkpoint_every,
            device=device,
            warmup_steps=spec.inner_warmup_steps or 0,
            compression=spec.compression,
            final_lr=spec.inner_final_lr,
            schedule_start=round * spec.inner_steps if spec.inner_final_lr is not None else 0,
            schedule_steps=spec.rounds * spec.inner_steps if spec.inner_final_lr is not None else 0,
        )

    def lr_at(self, step: int) -> float:
        """The learning rate of this task's step `step` (schedule.scheduled_lr)."""
        return scheduled_lr(
            self.lr,
            step,
            warmup_steps=self.warmup_steps,
            final_lr=self.final_lr,
            position=self.schedule_start + step,
            total=self.schedule_steps,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        if self.final_lr is None:  # no decay: the settings of jobs from before the schedule existed
            for name in ("final_lr", "schedule_start", "schedule_steps"):
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InnerSettings:
        """Strict inverse of to_dict (settings arrive over the wire)."""
        fields = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or not set(data) <= fields or not (fields - _OPTIONAL) <= set(data):
            raise ExecutionError(ErrorKind.INVALID_INPUT, f"training settings need exactly {sorted(fields)}")
        try:
            s = cls(**{**data, "betas": tuple(float(b) for b in data["betas"])})
        except (TypeError, ValueError) as exc:
            raise ExecutionError(ErrorKind.INVALID_INPUT, f"bad training settings: {exc}") from None
        s.check()
        return s

    def check(self) -> None:
        ints = (
            self.steps, self.batch_size, self.checkpoint_every, self.seed, self.warmup_steps,
            self.schedule_start, self.schedule_steps,
        )  # fmt: skip
        floats = [self.lr, self.weight_decay, self.eps, *self.betas]
        if self.final_lr is not None:
            floats.append(self.final_lr)
        ok = (
            self.loss in LOSSES
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints)
            and min(self.steps, self.batch_size, self.checkpoint_every) >= 1
            and all(isinstance(v, int | float) and math.isfinite(v) for v in floats)
            and len(self.betas) == 2
            and self.compression in COMPRESSIONS
            and (self.final_lr is None or (0 <= self.final_lr <= self.lr and self.schedule_steps >= 1))
        )
        if not ok:
            raise ExecutionError(ErrorKind.INVALID_INPUT, f"invalid training settings {self}")
