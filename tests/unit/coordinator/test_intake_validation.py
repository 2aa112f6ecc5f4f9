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


class _Kinds:
    """A kind whose vet is measured for specs that say so (Kind.vet_is_measured)."""

    def for_job(self, kind: str) -> _Kinds:
        return self

    def vet_is_measured(self, spec: _Spec) -> bool:
        return spec.measured


class _Spec:
    kind = "inference"

    def __init__(self, measured: bool) -> None:
        self.measured = measured


def test_a_submission_whose_vet_is_measured_holds_a_validation_slot() -> None:
    """A measured probe starts a child of its own: SubmitJob's vet of one holds the submitter's slot
    as ValidateJob does, so many submissions queue at most max_validations children, one each."""
    gate = intake(2)
    gate.kinds = _Kinds()  # type: ignore[assignment]
    with gate._vet_slot("0xa", _Spec(measured=True)):
        with pytest.raises(QuotaExceeded, match="one per submitter"), gate._vet_slot("0xa", _Spec(measured=True)):
            pass
        with gate._vet_slot("0xa", _Spec(measured=False)):  # the warm referee's probe: no slot, as before
            pass
        with gate._validation_slot("0xb"):
            with pytest.raises(QuotaExceeded, match="at most 2"), gate._vet_slot("0xc", _Spec(measured=True)):
                pass
    with gate._vet_slot("0xa", _Spec(measured=True)):  # freed
        pass
