"""The verification policy a job may carry (inference and training alike)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from tensorgrid.errors import SpecError
from tensorgrid.spec.checks import build, check_int, check_number, require_object

VERIFY_MODES = ("spotcheck", "replicate", "none")
# Verification's share of a job's compute under "spotcheck": a check of m rows may run on a
# checker and again on the coordinator's referee (two nodes' agreement proves nothing unless
# both are trusted), so m is capped at CHECK_BUDGET / CHECK_RUNS of the task's rows, never
# below one row. (A new node's inference check runs once, on the referee alone: half that.)
# (Generation: the referee scores a check's prompts in one forward pass, ~0.1x a decode, and
# its half of the budget holds its one program load per job and the dearer small batch a
# check decodes in: docs/GENERATION.md has the figures.)
CHECK_BUDGET = 0.05
CHECK_RUNS = 2
# Decoys per shard when a policy does not say (`decoys` left out): none. They are the submitter's
# to ask for (`decoys` 1: D = T, so an m-row task is a check with probability 1/6 for a trusted
# node's result, and never for a new node's inference result, which the referee checks alone;
# policy.py has the figures): they double a job's checks, and each check is mostly a forward
# call's fixed cost, so at D = T benchmarks.verification measured 11.8% extra compute on a
# quiet machine, past the 5% budget that the rows-only count keeps.
DEFAULT_DECOYS = 0.0
MAX_DECOYS = 4.0


@dataclass(frozen=True)
class VerificationSpec:
    """How a job's results are verified beyond signature, lease and hash (which always apply).

    mode: "spotcheck" re-executes a sample of rows of a result on another node; "replicate"
    re-executes every row of every result (BOINC-style 2x, the expensive baseline); "none".
    Spot-check rows per task are derived so that a node checked every time and corrupting
    `corrupt_fraction` of its rows is caught in a job with probability >= `target_detection`,
    as far as CHECK_BUDGET of the job's compute buys (a smaller job is checked less and its
    nodes need more stake: see detection_rows), unless `spot_rows` sets them. Nodes with fewer
    than `trust_after` consecutive valid results are always checked; trusted ones with
    probability 1/consecutive_valid, never below `check_floor` (their lower detection is what
    the job's required stake pays for). A fraction `canary_rate` of verified shards is
    re-leased whole as known-answer canaries (drawn when the shard is leased; an untrusted
    node's shard's canary runs on another node meanwhile and counts once the shard verifies).

    decoys: ordinary tasks of exactly a check's m rows carved out of the shards, `decoys` of
    them per shard (D = ceil(decoys x T), in [0, 4], as far as the compute budget pays for their
    checks), so a node cannot tell a check by its size;
    each is paid one reward with probability m / shard rows (decoy_plan). None (left out of the
    spec's canonical bytes, so older specs keep their hash) means DEFAULT_DECOYS.
    """

    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("decoys",)  # left out of the canonical bytes while None

    mode: str = "spotcheck"
    target_detection: float = 0.99
    corrupt_fraction: float = 0.01
    spot_rows: int = 0
    trust_after: int = 10
    check_floor: float = 0.1
    canary_rate: float = 0.005
    decoys: float | None = None

    @property
    def decoy_ratio(self) -> float:
        """Decoys per shard: `decoys`, or DEFAULT_DECOYS when the spec leaves it out; 0 unless spot-checking."""
        if self.mode != "spotcheck":
            return 0.0
        return DEFAULT_DECOYS if self.decoys is None else float(self.decoys)


def detection_rows(v: VerificationSpec, tasks: int, task_rows: int) -> int:
    """Rows m to re-run of each of a job's `tasks` results so that a node corrupting a fraction
    `corrupt_fraction` of its rows and checked every time is caught in the job with probability
    >= `target_detection`: (1-f)^(m*T) <= 1 - target, capped by the compute budget
    (budget_rows) and at task_rows; `spot_rows` overrides both.

    The target needs about ln(1-target)/ln(1-f) rows over the whole job (458 at the defaults),
    whatever its size: a job of a few hundred rows of a large model would spend most of its
    compute checking itself. The budget keeps checks at CHECK_BUDGET of the compute instead;
    the detection that buys is what the job's report shows, and the stake its nodes need
    (p*S > reward) rises to match, so cheating still does not pay."""
    if v.spot_rows:
        return min(v.spot_rows, task_rows)
    f, t = v.corrupt_fraction, v.target_detection
    per_task = 1.0 - (1.0 - t) ** (1.0 / max(1, tasks))  # detection each task must contribute
    if per_task >= 1.0 or f >= 1.0:
        m = task_rows
    else:
        m = math.ceil(math.log(1.0 - per_task) / math.log(1.0 - f))
    return max(1, min(task_rows, m, budget_rows(task_rows)))


def budget_rows(task_rows: int) -> int:
    """The most rows a spot-check of a task of task_rows rows may re-run within CHECK_BUDGET of
    its compute (rows of one job cost the same), counting the checker's run and the referee's;
    at least one row, so a shard under CHECK_RUNS / CHECK_BUDGET rows (40) costs more."""
    return max(1, math.floor(task_rows * CHECK_BUDGET / CHECK_RUNS))


def decoy_plan(v: VerificationSpec | None, shards: int, shard_rows: int) -> tuple[int, int]:
    """(D, m): the decoys a job of `shards` shards of `shard_rows` rows gets, and the rows m of
    every check and every decoy.

    m is what the job asks of a check without decoys (detection_rows for its T shards): a
    cheater sees which of its own tasks are decoys (only checks are as small) and can leave them
    alone, so their checks add nothing against it and the shards' checks must reach the target
    by themselves. Every decoy is checked too (else its rows could be changed unseen), so the
    T + D checks must fit the compute budget: (T + D)·m ≤ T·budget_rows(S). D is
    ceil(decoys × T) or what that budget leaves (none when the job's checks are at the budget's
    limit already), carved out of the T - 1 shards that are always full (the last may be short),
    at most k = (S - m - 1) // m each, so each keeps more than m rows; when those cannot hold D,
    the job gets none. Also none without spot-checks or with `decoys` 0.
    """
    v = v or VerificationSpec()
    if shards <= 0 or shard_rows <= 0:
        return 0, 0
    m = detection_rows(v, shards, shard_rows) if v.mode != "replicate" else shard_rows
    want = math.ceil(v.decoy_ratio * shards - 1e-9)
    affordable = shards * budget_rows(shard_rows) // m - shards
    decoys = min(want, max(0, affordable))
    per_shard = (shard_rows - m - 1) // m
    if decoys <= 0 or per_shard <= 0 or (shards - 1) * per_shard < decoys:
        return 0, m
    return decoys, m


def fee_tasks(v: VerificationSpec | None, tasks: int, task_rows: int) -> int:
    """Rewards a job's escrow holds beyond its `tasks` shards: the verification fee, which pays
    its checkers and its decoys.

    Escrows charge whole rewards, while a spot-check re-runs a fraction of a task, so a checker
    proven right wins one reward with probability (rows it re-ran ÷ rows of the task it
    checked): its expected pay is its share of the work (a canary, a whole shard, always wins).
    A decoy (decoy_plan) is paid the same way: one reward with probability m / shard rows. The
    fee covers every task checked (a new node's lot, decoys included) plus canaries and every
    decoy, and two standard deviations of the draws; what is not won goes back with the rest of
    the escrow. Rows are the task's rows for inference and its prompts for generation; 0 when
    nothing is checked. `tasks` counts the shards only (decoys are derived from them).
    """
    v = v or VerificationSpec()
    if v.mode == "none" or tasks <= 0 or task_rows <= 0:
        return 0
    decoys, m = decoy_plan(v, tasks, task_rows)
    p, c = min(1.0, m / task_rows), v.canary_rate
    checked = tasks + decoys
    expected = checked * (p + c) + decoys * p
    spread = math.sqrt(checked * (p * (1.0 - p) + c * (1.0 - c)) + decoys * p * (1.0 - p))
    return math.ceil(expected + 2.0 * spread - 1e-9)


def shards_of(v: VerificationSpec | None, planned: int, shard_rows: int) -> int:
    """The shards T of a job planned into `planned` tasks (T + D, decoy_plan), inverting T -> T + D
    (which only grows with T); `planned` itself if no T fits (a job planned before decoys)."""
    lo, hi = 0, planned
    while lo < hi:  # the smallest T with T + D(T) >= planned
        mid = (lo + hi) // 2
        if mid + decoy_plan(v, mid, shard_rows)[0] >= planned:
            hi = mid
        else:
            lo = mid + 1
    return lo if lo + decoy_plan(v, lo, shard_rows)[0] == planned else planned


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
    if v.decoys is not None:
        check_number("verification.decoys", v.decoys, 0.0, MAX_DECOYS, ints=True)


def check_policy(policy: Any) -> None:
    """A spec's optional policy: None (the default policy) or a valid VerificationSpec."""
    if policy is None:
        return
    if not isinstance(policy, VerificationSpec):
        raise SpecError("verification must be a VerificationSpec")
    validate_verification(policy)
