"""inference: run a torch.export program over a safetensors file, sharded along dim 0."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tensorgrid.errors import SpecError
from tensorgrid.spec.base import JobSpecBase
from tensorgrid.spec.checks import Decoder, blob_ref
from tensorgrid.spec.verification import VerificationSpec, check_policy, decode_verification
from tensorgrid.types import BlobRef


def input_names_of(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{name} must be a list of non-empty strings")
    return tuple(value)


@dataclass(frozen=True, kw_only=True)
class InferenceSpec(JobSpecBase):
    """Run a torch.export program over a safetensors file, sharded along dim 0."""

    model: BlobRef
    inputs: BlobRef
    input_names: tuple[str, ...] = ()
    shard_rows: int = 256
    batch_size: int = 0
    kind: str = "inference"
    verification: VerificationSpec | None = None  # None: the default policy (and the old spec bytes)

    DECODERS: ClassVar[Mapping[str, Decoder]] = {
        "model": blob_ref,
        "inputs": blob_ref,
        "input_names": input_names_of,
        "verification": decode_verification,
    }
    INT_RANGES: ClassVar[Mapping[str, tuple[int, int]]] = {"shard_rows": (1, 10_000_000), "batch_size": (0, 10_000_000)}
    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("verification",)

    def validate(self) -> None:
        super().validate()
        if len(set(self.input_names)) != len(self.input_names):
            raise SpecError("input_names has duplicates")
        check_policy(self.verification)
