"""Where the training spec used to live; it is tensorgrid.spec.training now (import from tensorgrid.spec).

Kept only so the coordinator's imports keep working until they move; nothing else may use it.
"""

from __future__ import annotations

from typing import Any

from tensorgrid.spec import (
    COMPRESSIONS,
    LOSSES,
    AdamW,
    NesterovSGD,
    TrainingSpec,
    canonical_json,
    check_dataset,
    eval_rows,
    spec_to_dict,
    validate_training,
)

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


def training_from_dict(data: Any) -> TrainingSpec:
    return TrainingSpec.from_dict(data)


def parse_training(raw: bytes) -> TrainingSpec:
    return TrainingSpec.parse(raw)


training_to_dict = spec_to_dict
canonical_training_json = canonical_json
