"""Job specs: declarative JSON, validated strictly, hashed canonically.

base (the common fields, canonical bytes, ids) · checks (the strict decoder) · one module
per kind (noop, inference, generation, training, endpoint) · verification (the policy a job carries) · registry.
"""

from tensorgrid.spec.base import (
    DEVICES,
    GiB,
    JobSpecBase,
    canonical_json,
    job_id_for,
    spec_hash,
    spec_to_dict,
    task_id_for,
)
from tensorgrid.spec.checks import MAX_SPEC_BYTES, decode_spec_json
from tensorgrid.spec.endpoint import EndpointSpec
from tensorgrid.spec.generation import GenerationSpec
from tensorgrid.spec.inference import InferenceSpec
from tensorgrid.spec.noop import NoopSpec
from tensorgrid.spec.registry import KINDS, JobSpec, parse_spec, spec_from_dict, validate
from tensorgrid.spec.training import (
    COMPRESSIONS,
    LOSSES,
    AdamW,
    NesterovSGD,
    TrainingSpec,
    check_dataset,
    eval_rows,
    validate_training,
)
from tensorgrid.spec.verification import VERIFY_MODES, VerificationSpec, validate_verification

__all__ = [
    "COMPRESSIONS",
    "DEVICES",
    "KINDS",
    "LOSSES",
    "MAX_SPEC_BYTES",
    "VERIFY_MODES",
    "AdamW",
    "EndpointSpec",
    "GenerationSpec",
    "GiB",
    "InferenceSpec",
    "JobSpec",
    "JobSpecBase",
    "NesterovSGD",
    "NoopSpec",
    "TrainingSpec",
    "VerificationSpec",
    "canonical_json",
    "check_dataset",
    "decode_spec_json",
    "eval_rows",
    "job_id_for",
    "parse_spec",
    "spec_from_dict",
    "spec_hash",
    "spec_to_dict",
    "task_id_for",
    "validate",
    "validate_training",
    "validate_verification",
]
