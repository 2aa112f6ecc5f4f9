"""Job specs: declarative JSON, validated strictly, hashed canonically.

A spec never carries code. The submitter signs its hash, the chain records it, and the
coordinator derives the job id from (submitter, spec hash), so submitting the same signed
spec twice is idempotent. A `nonce` field makes otherwise identical jobs distinct.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Union

from eth_utils import keccak

from tensorgrid.blobs import check_sha256
from tensorgrid.errors import BlobError, SpecError
from tensorgrid.types import BlobRef

if TYPE_CHECKING:
    from tensorgrid.training.spec import TrainingSpec

MAX_SPEC_BYTES = 64 * 1024
GiB = 1 << 30
DEVICES = ("any", "cpu", "cuda")


VERIFY_MODES = ("spotcheck", "replicate", "none")


@dataclass(frozen=True)
class VerificationSpec:
    """How a job's results are verified beyond signature, lease and hash (which always apply).

    mode: "spotcheck" re-executes a sample of rows of a result on another node; "replicate"
    re-executes every row of every result (BOINC-style 2x, the expensive baseline); "none".
    Spot-check rows per task are derived so that a node checked every time and corrupting
    `corrupt_fraction` of its rows is caught in a job with probability >= `target_detection`,
    unless `spot_rows` sets them. Nodes with fewer than `trust_after` consecutive valid results
    are always checked; trusted ones with probability 1/consecutive_valid, never below
    `check_floor` (their lower detection is what the job's required stake pays for). A fraction
    `canary_rate` of verified shards is re-leased whole as known-answer canaries.
    """

    mode: str = "spotcheck"
    target_detection: float = 0.99
    corrupt_fraction: float = 0.01
    spot_rows: int = 0
    trust_after: int = 10
    check_floor: float = 0.1
    canary_rate: float = 0.005


@dataclass(frozen=True)
class InferenceSpec:
    """Run a torch.export program over a safetensors file, sharded along dim 0."""

    model: BlobRef
    inputs: BlobRef
    input_names: tuple[str, ...] = ()
    shard_rows: int = 256
    batch_size: int = 0
    device: str = "any"
    min_memory_bytes: int = 0
    task_memory_limit_bytes: int = 4 * GiB
    task_time_limit_s: int = 600
    max_attempts: int = 5
    reward_per_task_wei: int = 0  # paid from the job's on-chain escrow per verified task
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    kind: str = "inference"
    verification: VerificationSpec | None = None  # None: the default policy (and the old spec bytes)


@dataclass(frozen=True)
class NoopSpec:
    """Tasks that do nothing: for measuring the grid's own dispatch overhead."""

    tasks: int
    device: str = "any"
    min_memory_bytes: int = 0
    task_memory_limit_bytes: int = GiB
    task_time_limit_s: int = 60
    max_attempts: int = 5
    reward_per_task_wei: int = 0
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    kind: str = "noop"


# Training specs live in tensorgrid.training.spec (which builds on this module), so they are
# imported lazily here and named by a forward reference.
JobSpec = Union[InferenceSpec, NoopSpec, "TrainingSpec"]  # noqa: UP007
_KINDS: dict[str, type[InferenceSpec] | type[NoopSpec]] = {"inference": InferenceSpec, "noop": NoopSpec}
KINDS = ("inference", "noop", "training")


def _is_training(spec: Any) -> bool:
    return getattr(spec, "kind", None) == "training"


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    if _is_training(spec):
        from tensorgrid.training.spec import training_to_dict

        return training_to_dict(spec)  # type: ignore[arg-type]
    d = asdict(spec)
    if isinstance(spec, InferenceSpec):
        d["input_names"] = list(spec.input_names)
        if spec.verification is None:
            del d["verification"]  # specs written before the field existed keep their hash
    return d


def canonical_json(spec: JobSpec) -> bytes:
    """The one byte form of a spec that is hashed and signed."""
    return json.dumps(spec_to_dict(spec), sort_keys=True, separators=(",", ":")).encode()


def spec_hash(spec_json: bytes) -> str:
    return hashlib.sha256(spec_json).hexdigest()


def job_id_for(submitter: str, spec_hash_hex: str) -> str:
    """bytes32 job id = keccak(submitter address ‖ spec hash), as 64 hex chars."""
    return keccak(bytes.fromhex(submitter.removeprefix("0x")) + bytes.fromhex(spec_hash_hex)).hex()


def task_id_for(job_id: str, index: int) -> str:
    return keccak(bytes.fromhex(job_id) + index.to_bytes(8, "big")).hex()


def decode_spec_json(raw: bytes) -> Any:
    """The JSON value of a spec, within the size limit; SpecError otherwise."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"spec is {len(raw)} bytes; the limit is {MAX_SPEC_BYTES}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"spec is not valid JSON: {e}") from None


def parse_spec(raw: bytes) -> JobSpec:
    """Parse and validate spec JSON; SpecError says exactly what is wrong."""
    data = decode_spec_json(raw)
    if not isinstance(data, dict):
        raise SpecError("spec must be a JSON object")
    kind = data.get("kind")
    if kind == "training":
        from tensorgrid.training.spec import training_from_dict

        return training_from_dict(data)
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SpecError(f"spec kind must be one of {sorted(KINDS)}, got {kind!r}")
    allowed = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError(f"unknown field(s) in {kind} spec: {', '.join(unknown)}")
    spec = _build(cls, data)
    validate(spec)
    return spec


def _build(cls: type[InferenceSpec] | type[NoopSpec], data: dict[str, Any]) -> JobSpec:
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name in ("model", "inputs"):
            kwargs[name] = _blob_ref(name, value)
        elif name == "verification" and cls is InferenceSpec:
            kwargs[name] = _verification(value)
        elif name == "input_names":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise SpecError("input_names must be a list of non-empty strings")
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SpecError(f"incomplete {data.get('kind')} spec: {e}") from None


def _blob_ref(name: str, value: Any) -> BlobRef:
    if not isinstance(value, dict) or set(value) != {"sha256", "size"}:
        raise SpecError(f"{name} must be an object with exactly 'sha256' and 'size'")
    try:
        check_sha256(value["sha256"])
    except BlobError as e:
        raise SpecError(f"{name}.sha256: {e}") from None
    if not _is_int(value["size"]) or value["size"] < 0:
        raise SpecError(f"{name}.size must be a non-negative integer")
    return BlobRef(value["sha256"], value["size"])


def _verification(value: Any) -> VerificationSpec:
    if not isinstance(value, dict):
        raise SpecError("verification must be an object")
    unknown = sorted(set(value) - set(VerificationSpec.__dataclass_fields__))
    if unknown:
        raise SpecError(f"unknown field(s) in verification: {', '.join(unknown)}")
    v = VerificationSpec(**value)
    validate_verification(v)
    return v


def validate_verification(v: VerificationSpec) -> None:
    """Range and type checks of a verification policy; SpecError says what to change."""
    if v.mode not in VERIFY_MODES:
        raise SpecError(f"verification.mode must be one of {VERIFY_MODES}, got {v.mode!r}")
    probabilities = (("target_detection", 0.0, 0.999999), ("corrupt_fraction", 1e-6, 1.0))
    for name, lo, hi in (*probabilities, ("check_floor", 0.0, 1.0), ("canary_rate", 0.0, 1.0)):
        x = getattr(v, name)
        if isinstance(x, bool) or not isinstance(x, int | float) or not lo <= x <= hi:
            raise SpecError(f"verification.{name} must be a number in [{lo}, {hi}], got {x!r}")
    for name, hi in (("spot_rows", 10_000_000), ("trust_after", 1_000_000)):
        x = getattr(v, name)
        if not _is_int(x) or not 0 <= x <= hi:
            raise SpecError(f"verification.{name} must be an integer in [0, {hi}], got {x!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(spec: JobSpec, name: str, lo: int, hi: int) -> None:
    v = getattr(spec, name)
    if not _is_int(v) or not lo <= v <= hi:
        raise SpecError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")


def validate(spec: JobSpec) -> None:
    """Range and type checks shared by parse_spec and the SDK (which validates before upload)."""
    if _is_training(spec):
        from tensorgrid.training.spec import validate_training

        validate_training(spec)  # type: ignore[arg-type]
        return
    if spec.device not in DEVICES:
        raise SpecError(f"device must be one of {DEVICES}, got {spec.device!r}")
    if not isinstance(spec.nonce, str) or len(spec.nonce) > 64:
        raise SpecError("nonce must be a string of at most 64 characters")
    _check_int(spec, "min_memory_bytes", 0, 1 << 50)
    _check_int(spec, "task_memory_limit_bytes", 64 << 20, 1 << 50)
    _check_int(spec, "task_time_limit_s", 1, 7 * 24 * 3600)
    _check_int(spec, "max_attempts", 1, 100)
    _check_int(spec, "reward_per_task_wei", 0, 2**256 - 1)
    if isinstance(spec, InferenceSpec):
        _check_int(spec, "shard_rows", 1, 10_000_000)
        _check_int(spec, "batch_size", 0, 10_000_000)
        if len(set(spec.input_names)) != len(spec.input_names):
            raise SpecError("input_names has duplicates")
        if spec.verification is not None:
            if not isinstance(spec.verification, VerificationSpec):
                raise SpecError("verification must be a VerificationSpec")
            validate_verification(spec.verification)
    else:
        _check_int(spec, "tasks", 1, 1_000_000)
