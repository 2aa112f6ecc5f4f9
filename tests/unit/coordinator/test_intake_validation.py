"""ValidateJob's bound: planning without an escrow runs for at most max_validations submitters at
once, one validation each; a slot is freed however its validation ends."""

from __future__ import annotations

import pytest

from coordinator.config import Limits
from coordinator.errors import QuotaExceeded
from coordinator.services.intake import Intake


def intake(max_validations: int) -> Intake:
    # only the limits matter to the slots; the rest is never touched here
    return Intake(None, None, None, Limits(max_validations=max_validations), None, None, None, None, None)  # type: ignore[arg-type]


def test_one_validation_per_submitter_and_a_global_bound() -> None:
    gate = intake(2)
    with gate._validation_slot("0xa"):
        with pytest.raises(QuotaExceeded, match="one per submitter"), gate._validation_slot("0xa"):
            pass
        with gate._validation_slot("0xb"):
            with pytest.raises(QuotaExceeded, match="at most 2"), gate._validation_slot("0xc"):
                pass
        with gate._validation_slot("0xc"):
            pass


def test_a_failed_validation_frees_its_slot() -> None:
    gate = intake(1)
    with pytest.raises(ValueError), gate._validation_slot("0xa"):
        raise ValueError("the plan refused the spec")
    with gate._validation_slot("0xb"):
        pass
