"""training: DiLoCo-style rounds over a safetensors dataset.

`validate()` checks what the spec alone can tell; given the dataset's safetensors header,
`validate_training` also checks the data fits (rows, names, dtypes against the loss).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tensorgrid.errors import SpecError
from tensorgrid.spec.base import JobSpecBase
from tensorgrid.spec.checks import (
    Decoder,
    as_float,
    blob_ref,
    build,
    check_int,
    check_number,
    constant,
    optional,
    require_object,
)
from tensorgrid.spec.verification import VerificationSpec, check_policy, decode_verification
from tensorgrid.types import BlobRef

if TYPE_CHECKING:  # a type only: importing it would load torch with every spec
    from tensorgrid.workloads.tensorfile import Header

LOSSES = ("cross_entropy", "mse")
COMPRESSIONS = ("fp16", "int8", "none")
_BLOB_FIELDS = ("train_program", "eval_program", "dataset", "initial_weights")
_OPTIONAL_BLOBS = ("eval_program", "initial_weights")
_INT_DTYPES = frozenset({"I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64"})
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


@dataclass(frozen=True)
class AdamW:
    """Inner optimizer; a fresh one per task (workers are stateless between rounds)."""

    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    name: str = "adamw"


@dataclass(frozen=True)
class NesterovSGD:
    """Outer optimizer applied by the coordinator to the averaged pseudo-gradient (DiLoCo)."""

    lr: float = 0.7
    # 0.8, not DiLoCo's 0.9: over seeds 0-3 of the digits job 0.9 swung -1.4..+1.7 points
    # around the data-parallel baseline, 0.8 stayed within -0.8..+1.1 (mean +0.1).
    momentum: float = 0.8
    name: str = "nesterov"


def _betas(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise SpecError(f"{name} must be a list of two numbers, got {value!r}")
    return as_float(name, value[0]), as_float(name, value[1])


_ADAMW: Mapping[str, Decoder] = {
    "lr": as_float,
    "betas": _betas,
    "weight_decay": as_float,
    "eps": as_float,
    "name": constant("adamw"),
}
_NESTEROV: Mapping[str, Decoder] = {"lr": as_float, "momentum": as_float, "name": constant("nesterov")}


def _adamw(name: str, value: Any) -> AdamW:
    obj = require_object(value, name, " like {'name': 'adamw', 'lr': 0.003}")
    return build(AdamW, obj, name, _ADAMW, prefix=f"{name}.")


def _nesterov(name: str, value: Any) -> NesterovSGD:
    obj = require_object(value, name, " like {'name': 'nesterov', 'lr': 0.7}")
    return build(NesterovSGD, obj, name, _NESTEROV, prefix=f"{name}.")


@dataclass(frozen=True, kw_only=True)
class TrainingSpec(JobSpecBase):
    """Train a torch.export program with DiLoCo rounds over a safetensors dataset.

    The dataset holds `features` + `labels` (one row each per sample) or `tokens` (int rows
    for next-token prediction). Each round every worker runs `inner_steps` AdamW steps of
    `batch_size` rows on its own disjoint shard, so one round consumes
    batch_size * inner_steps * workers_per_round rows of the training split.
    reward_per_task_wei is paid per accepted pseudo-gradient; the escrow covers
    rounds × workers_per_round of them.
    """

    train_program: BlobRef
    dataset: BlobRef
    eval_program: BlobRef | None = None
    initial_weights: BlobRef | None = None  # None: the train program's own weights
    loss: str = "cross_entropy"
    inner_optimizer: AdamW = field(default_factory=AdamW)
    outer_optimizer: NesterovSGD = field(default_factory=NesterovSGD)
    rounds: int = 15
    inner_steps: int = 20
    workers_per_round: int = 4
    batch_size: int = 16
    eval_fraction: float = 0.2
    seed: int = 0
    compression: str = "int8"
    checkpoint_every: int = 5
    quorum: float = 0.75
    round_deadline_s: int = 900
    kind: str = "training"
    # Audits of results by checkpoint reveal and segment replay; None: the default spot-check
    # policy (and the bytes of specs written before the field existed).
    verification: VerificationSpec | None = None
    # Inner steps over which each task ramps its AdamW learning rate up linearly from lr/W to lr
    # (a fresh AdamW's first steps are lr-sized on every parameter); None: no warm-up.
    inner_warmup_steps: int | None = None
    # The inner learning rate at the job's last inner step: lr decays to it along a cosine over the
    # whole job (rounds × inner_steps steps), continuing across rounds; None: a constant lr.
    inner_final_lr: float | None = None
    # Rounds at the job's start whose outer step is the plain average of the workers' weights
    # (θ ← θ − Δ, the momentum left at zero); the outer optimizer steps from this round on.
    # None: it steps from round 0.
    outer_plain_rounds: int | None = None

    DECODERS: ClassVar[Mapping[str, Decoder]] = {
        "train_program": blob_ref,
        "dataset": blob_ref,
        "eval_program": optional(blob_ref),
        "initial_weights": optional(blob_ref),
        "inner_optimizer": _adamw,
        "outer_optimizer": _nesterov,
        "eval_fraction": as_float,
        "quorum": as_float,
        "verification": optional(decode_verification),
        "inner_final_lr": optional(as_float),
    }
    INT_RANGES: ClassVar[Mapping[str, tuple[int, int]]] = {
        "rounds": (1, 1_000_000),
        "inner_steps": (1, 1_000_000),
        "workers_per_round": (1, 10_000),
        "batch_size": (1, 1_000_000),
        "seed": (0, (1 << 63) - 1),
        "round_deadline_s": (1, 30 * 24 * 3600),
        "checkpoint_every": (1, 1_000_000),  # beyond inner_steps: commit start and end only
    }
    LATE_FIELDS: ClassVar[tuple[str, ...]] = (
        "verification", "inner_warmup_steps", "inner_final_lr", "outer_plain_rounds",
    )  # fmt: skip

    @property
    def rows_per_round(self) -> int:
        return self.batch_size * self.inner_steps * self.workers_per_round

    @property
    def paid_tasks(self) -> int:
        """Pseudo-gradients the job can pay for at most: its escrow is reward × this."""
        return self.rounds * self.workers_per_round

    def plain_round(self, round: int) -> bool:
        """Is round `round`'s outer step the plain average (outer_plain_rounds)?"""
        return round < (self.outer_plain_rounds or 0)

    @property
    def quorum_workers(self) -> int:
        """Accepted pseudo-gradients a round needs before its outer step may run."""
        return max(1, math.ceil(self.quorum * self.workers_per_round - 1e-9))

    def validate(self) -> None:
        """Ranges and combinations; validate_training adds the dataset's fit."""
        super().validate()
        for name in _BLOB_FIELDS:
            ref = getattr(self, name)
            if not (isinstance(ref, BlobRef) or (ref is None and name in _OPTIONAL_BLOBS)):
                raise SpecError(f"{name} must be a blob reference (sha256 and size)")
        if self.loss not in LOSSES:
            raise SpecError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.compression not in COMPRESSIONS:
            raise SpecError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        check_number("eval_fraction", self.eval_fraction, 0.0, 0.5, hi_open=True)
        check_number("quorum", self.quorum, 0.0, 1.0, lo_open=True)
        _check_optimizers(self.inner_optimizer, self.outer_optimizer)
        check_policy(self.verification)
        if self.inner_warmup_steps is not None:
            check_int("inner_warmup_steps", self.inner_warmup_steps, 0, 1_000_000)
        if self.inner_final_lr is not None:
            check_number("inner_final_lr", self.inner_final_lr, 0.0, self.inner_optimizer.lr)
        if self.outer_plain_rounds is not None:
            check_int("outer_plain_rounds", self.outer_plain_rounds, 0, 1_000_000)
        if self.task_time_limit_s > self.round_deadline_s:
            raise SpecError(
                f"task_time_limit_s ({self.task_time_limit_s}) exceeds round_deadline_s "
                f"({self.round_deadline_s}): a task could never finish inside its round"
            )
        if self.eval_program is not None and self.eval_fraction == 0.0:
            raise SpecError("eval_program is set but eval_fraction is 0: there is no held-out data to evaluate")


def _check_optimizers(inner: AdamW, outer: NesterovSGD) -> None:
    if not isinstance(inner, AdamW) or inner.name != "adamw":
        raise SpecError("inner_optimizer must be AdamW (name 'adamw')")
    if not isinstance(outer, NesterovSGD) or outer.name != "nesterov":
        raise SpecError("outer_optimizer must be Nesterov SGD (name 'nesterov')")
    check_number("inner_optimizer.lr", inner.lr, 0.0, 1.0, lo_open=True)
    check_number("inner_optimizer.weight_decay", inner.weight_decay, 0.0, 1.0)
    check_number("inner_optimizer.eps", inner.eps, 0.0, 1.0, lo_open=True)
    if not isinstance(inner.betas, tuple) or len(inner.betas) != 2:
        raise SpecError("inner_optimizer.betas must be two numbers")
    for beta in inner.betas:
        check_number("inner_optimizer.betas[i]", beta, 0.0, 1.0, hi_open=True)
    check_number("outer_optimizer.lr", outer.lr, 0.0, 10.0, lo_open=True)
    check_number("outer_optimizer.momentum", outer.momentum, 0.0, 1.0, hi_open=True)


def validate_training(spec: TrainingSpec, dataset: Header | None = None) -> None:
    """Check ranges and combinations; with the dataset's header, also check the data fits."""
    spec.validate()
    if dataset is not None:
        check_dataset(spec, dataset)


def eval_rows(spec: TrainingSpec, rows: int) -> int:
    """Rows of a dataset of `rows` rows held out for evaluation (at least 1 if eval_fraction > 0)."""
    if spec.eval_fraction == 0.0:
        return 0
    return max(1, round(spec.eval_fraction * rows))


def check_dataset(spec: TrainingSpec, header: Header) -> None:
    """Does the dataset fit the spec? Names, row counts, dtypes against the loss, split sizes."""
    names = set(header.tensors)
    if names == {"tokens"}:
        tokens = header.tensors["tokens"]
        if tokens.dtype not in _INT_DTYPES or len(tokens.shape) != 2 or tokens.shape[1] < 2:
            raise SpecError(
                f"tokens must be a 2-D integer tensor [sequences, length >= 2], got {tokens.dtype}{list(tokens.shape)}"
            )
        if spec.loss != "cross_entropy":
            raise SpecError("a tokens dataset trains next-token prediction: loss must be cross_entropy")
        rows = tokens.shape[0]
    elif names == {"features", "labels"}:
        features, labels = header.tensors["features"], header.tensors["labels"]
        if not features.shape or not labels.shape or features.shape[0] != labels.shape[0]:
            raise SpecError(
                f"features {list(features.shape)} and labels {list(labels.shape)} must have the same "
                "number of rows (dim 0)"
            )
        _check_labels(spec.loss, labels.dtype, labels.shape)
        rows = features.shape[0]
    else:
        raise SpecError(f"the dataset must hold exactly 'features' and 'labels', or 'tokens'; it holds {sorted(names)}")
    held = eval_rows(spec, rows)
    train = rows - held
    if spec.rows_per_round > train:
        raise SpecError(
            f"one round needs batch_size × inner_steps × workers_per_round = {spec.batch_size} × "
            f"{spec.inner_steps} × {spec.workers_per_round} = {spec.rows_per_round} distinct rows, but the "
            f"training split has only {train} ({rows} rows minus {held} held out): lower one of them"
        )


def _check_labels(loss: str, dtype: str, shape: tuple[int, ...]) -> None:
    if loss == "cross_entropy":
        if dtype not in _INT_DTYPES or len(shape) != 1:
            raise SpecError(f"cross_entropy needs labels as 1-D integer class indices, got {dtype}{list(shape)}")
        return
    if dtype in _FLOAT_DTYPES:
        return
    if dtype in _INT_DTYPES and len(shape) == 1:
        return  # one integer target per row: regressed as a float (e.g. a rating)
    raise SpecError(
        f"mse needs float labels, or 1-D integer labels (one numeric target per row, regressed as a "
        f"float); got {dtype}{list(shape)}: for class labels use loss cross_entropy"
    )
