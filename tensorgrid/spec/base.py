"""What every job spec is: the common fields and their checks, the canonical bytes, the ids.

A spec never carries code. The submitter signs its hash, the chain records it, and the
coordinator derives the job id from (submitter, spec hash), so submitting the same signed
spec twice is idempotent. A `nonce` field makes otherwise identical jobs distinct.

A kind is a frozen dataclass deriving from JobSpecBase that declares its own fields, how the
ones that need it are decoded from JSON (DECODERS), its integer ranges (INT_RANGES), and
extends validate() for what data cannot declare; the registry maps its `kind` name to it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

from eth_utils import keccak

from tensorgrid.errors import SpecError
from tensorgrid.spec.checks import Decoder, build, check_int, decode_spec_json, wei

GiB = 1 << 30
DEVICES = ("any", "cpu", "cuda")
# The integer fields every kind has, and their ranges.
COMMON_INT_RANGES: Mapping[str, tuple[int, int]] = {
    "min_memory_bytes": (0, 1 << 50),
    "task_memory_limit_bytes": (64 << 20, 1 << 50),
    "task_time_limit_s": (1, 7 * 24 * 3600),
    "max_attempts": (1, 100),
    "reward_per_task_wei": (0, 2**256 - 1),
}

# How the JSON values of common fields become Python values (a kind's DECODERS add its own).
COMMON_DECODERS: Mapping[str, Decoder] = {"reward_per_task_wei": wei}


def new_nonce() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, kw_only=True)
class JobSpecBase:
    """The fields every kind has: where a task may run, its limits, its pay, the nonce and kind."""

    device: str = "any"
    min_memory_bytes: int = 0
    task_memory_limit_bytes: int = 4 * GiB
    task_time_limit_s: int = 600
    max_attempts: int = 5
    reward_per_task_wei: int = 0  # paid from the job's on-chain escrow per verified task
    nonce: str = field(default_factory=new_nonce)
    kind: str = ""  # each kind's default is its registry name

    # How JSON values of this kind's fields become Python values; fields not named pass as they are.
    DECODERS: ClassVar[Mapping[str, Decoder]] = {}
    INT_RANGES: ClassVar[Mapping[str, tuple[int, int]]] = {}
    # Fields added after specs of this kind were first signed: while None they are left out of
    # the canonical bytes, so those specs keep their hash.
    LATE_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def kind_name(cls) -> str:
        """The kind's registry name: the default of its `kind` field."""
        return str(cls.__dataclass_fields__["kind"].default)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Build and validate a spec of this kind from decoded JSON; SpecError says what is wrong."""
        kind = cls.kind_name()
        if not isinstance(data, dict):
            raise SpecError("spec must be a JSON object")
        if data.get("kind") != kind:
            raise SpecError(f"a {kind} spec needs kind '{kind}', got {data.get('kind')!r}")
        spec = build(cls, data, f"{kind} spec", {**COMMON_DECODERS, **cls.DECODERS})
        spec.validate()
        return spec

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Parse and validate spec JSON of this kind."""
        return cls.from_dict(decode_spec_json(raw))

    def validate(self) -> None:
        """Range and type checks (shared by parsing and the SDK, which validates before uploading).
        A kind adding checks calls this first."""
        kind = self.kind_name()
        if self.kind != kind:
            raise SpecError(f"kind must be {kind!r}, got {self.kind!r}")
        if self.device not in DEVICES:
            raise SpecError(f"device must be one of {DEVICES}, got {self.device!r}")
        if not isinstance(self.nonce, str) or len(self.nonce) > 64:
            raise SpecError("nonce must be a string of at most 64 characters")
        for name, (lo, hi) in {**COMMON_INT_RANGES, **self.INT_RANGES}.items():
            check_int(name, getattr(self, name), lo, hi)


def _json_form(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_form(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_form(v) for v in value]
    return value


def spec_to_dict(spec: JobSpecBase) -> dict[str, Any]:
    """The spec as JSON-ready data: tuples become lists, late fields left out while None (also a
    nested setting's, such as verification.decoys)."""
    d: dict[str, Any] = _json_form(asdict(spec))
    for name in spec.LATE_FIELDS:
        if d[name] is None:
            del d[name]
    for name, value in d.items():
        for late in getattr(getattr(spec, name), "LATE_FIELDS", ()) if isinstance(value, dict) else ():
            if value.get(late, 0) is None:
                del value[late]
    return d


def canonical_json(spec: JobSpecBase) -> bytes:
    """The one byte form of a spec that is hashed and signed."""
    return json.dumps(spec_to_dict(spec), sort_keys=True, separators=(",", ":")).encode()


def spec_hash(spec_json: bytes) -> str:
    return hashlib.sha256(spec_json).hexdigest()


def job_id_for(submitter: str, spec_hash_hex: str) -> str:
    """bytes32 job id = keccak(submitter address ‖ spec hash), as 64 hex chars."""
    return keccak(bytes.fromhex(submitter.removeprefix("0x")) + bytes.fromhex(spec_hash_hex)).hex()


def task_id_for(job_id: str, index: int) -> str:
    return keccak(bytes.fromhex(job_id) + index.to_bytes(8, "big")).hex()
