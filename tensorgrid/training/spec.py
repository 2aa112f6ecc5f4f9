"""Training job specs (DiLoCo-style rounds): declarative JSON, validated strictly.

Same rules as tensorgrid.spec: no code, unknown fields refused, one canonical byte form that
is hashed and signed. `validate_training` checks what the spec alone can tell; given the
dataset's safetensors header it also checks the data fits (rows, names, dtypes vs loss).
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

from tensorgrid.errors import SpecError
from tensorgrid.spec import (
    DEVICES,
    GiB,
    VerificationSpec,
    _blob_ref,
    _check_int,
    _verification,
    decode_spec_json,
    validate_verification,
)
from tensorgrid.types import BlobRef
from tensorgrid.workloads.tensorfile import Header

__all__ = [
    "COMPRESSIONS",
    "LOSSES",
    "AdamW",
    "NesterovSGD",
    "TrainingSpec",
    "canonical_training_json",
    "check_dataset",
    "eval_rows",
    "parse_training",
    "training_from_dict",
    "training_to_dict",
    "validate_training",
]

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


@dataclass(frozen=True)
class TrainingSpec:
    """Train a torch.export program with DiLoCo rounds over a safetensors dataset.

    The dataset holds `features` + `labels` (one row each per sample) or `tokens` (int rows
    for next-token prediction). Each round every worker runs `inner_steps` AdamW steps of
    `batch_size` rows on its own disjoint shard, so one round consumes
    batch_size * inner_steps * workers_per_round rows of the training split.
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
    device: str = "any"
    min_memory_bytes: int = 0
    task_memory_limit_bytes: int = 4 * GiB
    task_time_limit_s: int = 600
    max_attempts: int = 5
    reward_per_task_wei: int = 0  # per accepted pseudo-gradient; escrow covers rounds × workers_per_round
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    kind: str = "training"
    # Audits of results by checkpoint reveal and segment replay; None: the default spot-check
    # policy (and the bytes of specs written before the field existed).
    verification: VerificationSpec | None = None

    @property
    def rows_per_round(self) -> int:
        return self.batch_size * self.inner_steps * self.workers_per_round

    @property
    def quorum_workers(self) -> int:
        """Accepted pseudo-gradients a round needs before its outer step may run."""
        return max(1, math.ceil(self.quorum * self.workers_per_round - 1e-9))


def training_to_dict(spec: TrainingSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["inner_optimizer"]["betas"] = list(spec.inner_optimizer.betas)
    if spec.verification is None:
        del d["verification"]  # specs written before the field existed keep their hash
    return d


def canonical_training_json(spec: TrainingSpec) -> bytes:
    """The one byte form of a training spec that is hashed and signed."""
    return json.dumps(training_to_dict(spec), sort_keys=True, separators=(",", ":")).encode()


def parse_training(raw: bytes) -> TrainingSpec:
    """Parse and validate training spec JSON; SpecError says exactly what is wrong."""
    return training_from_dict(decode_spec_json(raw))


def training_from_dict(data: Any) -> TrainingSpec:
    """Build and validate a TrainingSpec from decoded JSON (what parse_spec dispatches to)."""
    if not isinstance(data, dict):
        raise SpecError("spec must be a JSON object")
    if data.get("kind") != "training":
        raise SpecError(f"a training spec needs kind 'training', got {data.get('kind')!r}")
    _refuse_unknown(data, TrainingSpec, "training spec")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name in _BLOB_FIELDS:
            optional = value is None and name in _OPTIONAL_BLOBS
            kwargs[name] = None if optional else _blob_ref(name, value)
        elif name == "inner_optimizer":
            kwargs[name] = _adamw(value)
        elif name == "outer_optimizer":
            kwargs[name] = _nesterov(value)
        elif name in ("eval_fraction", "quorum"):
            kwargs[name] = _as_float(name, value)
        elif name == "verification":
            kwargs[name] = None if value is None else _verification(value)
        else:
            kwargs[name] = value
    try:
        spec = TrainingSpec(**kwargs)
    except TypeError as e:
        raise SpecError(f"incomplete training spec: {e}") from None
    validate_training(spec)
    return spec


def _refuse_unknown(data: dict[str, Any], cls: type, what: str) -> None:
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise SpecError(f"unknown field(s) in {what}: {', '.join(map(str, unknown))}")


def _as_float(name: str, value: Any) -> float:
    # Ints are accepted and normalized so 1 and 1.0 give the same canonical bytes.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _adamw(value: Any) -> AdamW:
    if not isinstance(value, dict):
        raise SpecError("inner_optimizer must be an object like {'name': 'adamw', 'lr': 0.003}")
    _refuse_unknown(value, AdamW, "inner_optimizer")
    if value.get("name", "adamw") != "adamw":
        raise SpecError(f"inner_optimizer.name must be 'adamw', got {value.get('name')!r}")
    kwargs: dict[str, Any] = {}
    for key in ("lr", "weight_decay", "eps"):
        if key in value:
            kwargs[key] = _as_float(f"inner_optimizer.{key}", value[key])
    if "betas" in value:
        betas = value["betas"]
        if not isinstance(betas, list | tuple) or len(betas) != 2:
            raise SpecError(f"inner_optimizer.betas must be a list of two numbers, got {betas!r}")
        kwargs["betas"] = tuple(_as_float("inner_optimizer.betas", b) for b in betas)
    return AdamW(**kwargs)


def _nesterov(value: Any) -> NesterovSGD:
    if not isinstance(value, dict):
        raise SpecError("outer_optimizer must be an object like {'name': 'nesterov', 'lr': 0.7}")
    _refuse_unknown(value, NesterovSGD, "outer_optimizer")
    if value.get("name", "nesterov") != "nesterov":
        raise SpecError(f"outer_optimizer.name must be 'nesterov', got {value.get('name')!r}")
    kwargs: dict[str, Any] = {k: _as_float(f"outer_optimizer.{k}", value[k]) for k in ("lr", "momentum") if k in value}
    return NesterovSGD(**kwargs)


def _int(spec: TrainingSpec, name: str, lo: int, hi: int) -> None:
    _check_int(cast(Any, spec), name, lo, hi)  # tensorgrid.spec's helper reads fields by name


def _in_range(name: str, value: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    ok = (
        isinstance(value, float)
        and math.isfinite(value)
        and (value > lo if lo_open else value >= lo)
        and (value < hi if hi_open else value <= hi)
    )
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise SpecError(f"{name} must be a number in {interval}, got {value!r}")


def validate_training(spec: TrainingSpec, dataset: Header | None = None) -> None:
    """Check ranges and combinations; with the dataset's header, also check the data fits."""
    if spec.kind != "training":
        raise SpecError(f"kind must be 'training', got {spec.kind!r}")
    for name in _BLOB_FIELDS:
        ref = getattr(spec, name)
        if not (isinstance(ref, BlobRef) or (ref is None and name in _OPTIONAL_BLOBS)):
            raise SpecError(f"{name} must be a blob reference (sha256 and size)")
    if spec.device not in DEVICES:
        raise SpecError(f"device must be one of {DEVICES}, got {spec.device!r}")
    if not isinstance(spec.nonce, str) or len(spec.nonce) > 64:
        raise SpecError("nonce must be a string of at most 64 characters")
    if spec.loss not in LOSSES:
        raise SpecError(f"loss must be one of {LOSSES}, got {spec.loss!r}")
    if spec.compression not in COMPRESSIONS:
        raise SpecError(f"compression must be one of {COMPRESSIONS}, got {spec.compression!r}")
    _int(spec, "min_memory_bytes", 0, 1 << 50)
    _int(spec, "task_memory_limit_bytes", 64 << 20, 1 << 50)
    _int(spec, "task_time_limit_s", 1, 7 * 24 * 3600)
    _int(spec, "max_attempts", 1, 100)
    _int(spec, "reward_per_task_wei", 0, 2**256 - 1)
    _int(spec, "rounds", 1, 1_000_000)
    _int(spec, "inner_steps", 1, 1_000_000)
    _int(spec, "workers_per_round", 1, 10_000)
    _int(spec, "batch_size", 1, 1_000_000)
    _int(spec, "seed", 0, (1 << 63) - 1)
    _int(spec, "round_deadline_s", 1, 30 * 24 * 3600)
    _int(spec, "checkpoint_every", 1, 1_000_000)  # beyond inner_steps: commit start and end only
    _in_range("eval_fraction", spec.eval_fraction, 0.0, 0.5, hi_open=True)
    _in_range("quorum", spec.quorum, 0.0, 1.0, lo_open=True)
    _check_optimizers(spec)
    if spec.verification is not None:
        if not isinstance(spec.verification, VerificationSpec):
            raise SpecError("verification must be a VerificationSpec")
        validate_verification(spec.verification)
    if spec.task_time_limit_s > spec.round_deadline_s:
        raise SpecError(
            f"task_time_limit_s ({spec.task_time_limit_s}) exceeds round_deadline_s "
            f"({spec.round_deadline_s}): a task could never finish inside its round"
        )
    if spec.eval_program is not None and spec.eval_fraction == 0.0:
        raise SpecError("eval_program is set but eval_fraction is 0: there is no held-out data to evaluate")
    if dataset is not None:
        check_dataset(spec, dataset)


def _check_optimizers(spec: TrainingSpec) -> None:
    inner, outer = spec.inner_optimizer, spec.outer_optimizer
    if not isinstance(inner, AdamW) or inner.name != "adamw":
        raise SpecError("inner_optimizer must be AdamW (name 'adamw')")
    if not isinstance(outer, NesterovSGD) or outer.name != "nesterov":
        raise SpecError("outer_optimizer must be Nesterov SGD (name 'nesterov')")
    _in_range("inner_optimizer.lr", inner.lr, 0.0, 1.0, lo_open=True)
    _in_range("inner_optimizer.weight_decay", inner.weight_decay, 0.0, 1.0)
    _in_range("inner_optimizer.eps", inner.eps, 0.0, 1.0, lo_open=True)
    if not isinstance(inner.betas, tuple) or len(inner.betas) != 2:
        raise SpecError("inner_optimizer.betas must be two numbers")
    for beta in inner.betas:
        _in_range("inner_optimizer.betas[i]", beta, 0.0, 1.0, hi_open=True)
    _in_range("outer_optimizer.lr", outer.lr, 0.0, 10.0, lo_open=True)
    _in_range("outer_optimizer.momentum", outer.momentum, 0.0, 1.0, hi_open=True)


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
