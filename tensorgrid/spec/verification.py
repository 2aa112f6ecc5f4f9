"""The verification policy a job may carry (inference and training alike)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tensorgrid.errors import SpecError
from tensorgrid.spec.checks import build, check_int, check_number, require_object

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


def detection_rows(v: VerificationSpec, tasks: int, task_rows: int) -> int:
    """Rows m to re-run of each of a job's `tasks` results so that a node corrupting a fraction
    `corrupt_fraction` of its rows and checked every time is caught in the job with probability
    >= `target_detection`: (1-f)^(m*T) <= 1 - target (`spot_rows` overrides; capped at task_rows)."""
    if v.spot_rows:
        return min(v.spot_rows, task_rows)
    f, t = v.corrupt_fraction, v.target_detection
    per_task = 1.0 - (1.0 - t) ** (1.0 / max(1, tasks))  # detection each task must contribute
    if per_task >= 1.0 or f >= 1.0:
        return task_rows
    m = math.ceil(math.log(1.0 - per_task) / math.log(1.0 - f))
    return max(1, min(task_rows, m))


def decode_verification(name: str, value: Any) -> VerificationSpec:
    policy = build(VerificationSpec, require_object(value, "verification"), "verification", {})
    validate_verification(policy)
    return policy


def validate_verification(v: VerificationSpec) -> None:
    """Range and type checks of a verification policy; SpecError says what to change."""
    if v.mode not in VERIFY_MODES:
        raise SpecError(f"verification.mode must be one of {VERIFY_MODES}, got {v.mode!r}")
    probabilities = (("target_detection", 0.0, 0.999999), ("corrupt_fraction", 1e-6, 1.0))
    for name, lo, hi in (*probabilities, ("check_floor", 0.0, 1.0), ("canary_rate", 0.0, 1.0)):
        check_number(f"verification.{name}", getattr(v, name), lo, hi, ints=True)
    for name, top in (("spot_rows", 10_000_000), ("trust_after", 1_000_000)):
        check_int(f"verification.{name}", getattr(v, name), 0, top)


def check_policy(policy: Any) -> None:
    """A spec's optional policy: None (the default policy) or a valid VerificationSpec."""
    if policy is None:
        return
    if not isinstance(policy, VerificationSpec):
        raise SpecError("verification must be a VerificationSpec")
    validate_verification(policy)
