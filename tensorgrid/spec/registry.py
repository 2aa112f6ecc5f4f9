"""The kinds of job, by name. A new kind is one module and one line here (and in JobSpec)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from tensorgrid.errors import SpecError
from tensorgrid.spec.base import JobSpecBase
from tensorgrid.spec.checks import decode_spec_json
from tensorgrid.spec.endpoint import EndpointSpec
from tensorgrid.spec.generation import GenerationSpec
from tensorgrid.spec.inference import InferenceSpec
from tensorgrid.spec.noop import NoopSpec
from tensorgrid.spec.training import TrainingSpec

KINDS: Mapping[str, type[JobSpecBase]] = {
    cls.kind_name(): cls for cls in (EndpointSpec, GenerationSpec, InferenceSpec, NoopSpec, TrainingSpec)
}
JobSpec = EndpointSpec | GenerationSpec | InferenceSpec | NoopSpec | TrainingSpec


def spec_from_dict(data: Any) -> JobSpec:
    """Build and validate the spec of whichever kind `data` names."""
    if not isinstance(data, dict):
        raise SpecError("spec must be a JSON object")
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SpecError(f"spec kind must be one of {sorted(KINDS)}, got {kind!r}")
    return cast(JobSpec, cls.from_dict(data))


def parse_spec(raw: bytes) -> JobSpec:
    """Parse and validate spec JSON; SpecError says exactly what is wrong."""
    return spec_from_dict(decode_spec_json(raw))


def validate(spec: JobSpecBase) -> None:
    """Range and type checks of a spec of any kind (the SDK's check before uploading)."""
    spec.validate()
