"""A job's verification policy: how often results are checked, how many rows, and what it buys.

Spot-checks: a node that corrupts a fraction f of its rows escapes one check of m rows
sampled without its knowledge with probability (1-f)^m. Adaptive replication (BOINC): a
node is checked every time until it has `trust_after` consecutive valid results, then with
probability 1/consecutive_valid, never below `check_floor`. The per-task sample size m is
chosen so that a node checked every time and doing all T tasks of a job is caught in that
job with probability >= target: (1-f)^(m*T) <= 1 - target, capped so that the checks of
a job (m rows on the checker and m again on the referee) cost at most CHECK_BUDGET (5%) of
its compute (tensorgrid.spec.verification.detection_rows). At check rate r the per-job
detection is 1 - (1 - r(1-(1-f)^m))^T. Economic security: with detection probability p, a
node must have stake S with p*S > reward, i.e. S > reward/p; the coordinator uses the
worst case (a node checked at the floor rate).

What the stake formula assumes, and what holds it up:
- Each result's check is an independent draw the node cannot predict or influence: the
  decision and the rows come from the coordinator's secret after the result is in, and the
  node never sees a check of its own result (another node, drawn by the coordinator, runs
  it). This does not depend on checks being unrecognisable.
- A check that runs is a real check: a checker's agreement verifies only when both nodes
  are trusted for the job; otherwise the referee re-runs the check's m rows (the same m the
  detection target asked of the check), and a confirmation it cannot run verifies nothing.
  (Before: 8 rows, so a 1%-row liar pair passed ~92% of confirmations, and a failed
  confirmation counted as verified: both inflated p.) A generation check's m prompts are
  confirmed by scoring the claimed tokens (one teacher-forced forward pass, each prompt's
  sampler replayed: tensorgrid/workloads/scoring.py), which fails on the first changed token
  as a decode would; only a confirmation that does not score is decoded, and only a decode
  blames anyone.
- An untrusted subject's inference check is the referee's alone (CheckPlan.direct): the
  referee re-runs its m rows at once and no node runs it. Detection is as before, row for row:
  the rows are the same m, drawn from the coordinator's secret after the result is in; a lone
  liar was caught before when its honest checker's m rows hit a corrupted one (then the
  referee's ruling on those rows), a colluding pair when the referee's confirmation of those
  m rows did, so both escape one check with probability (1-f)^m, now as then, and a job's
  T checks with (1-f)^(mT) (benchmarks.scaling's job: T = 4, m = 15 (the budget's cap),
  1 - 0.99^60 = 45% per job, as before). Blame still needs the referee's soundness runs.
  The check's compute halves (one run, not the checker's and the referee's); m stays as
  CHECK_RUNS = 2 sizes it, which still holds for a trusted subject's check by an untrusted
  checker. A check the referee cannot run (a CUDA-only program) goes to a drawn node as before.
- Trust, which lowers the rate to the floor, is worth at least the job: it needs verified
  results on paid jobs of >= 3 other submitters adding up to trust_after x this job's reward
  per task (repositories/verification/trust.py). Before, a Sybil earned it on its own free
  jobs, and one trusted node's word skipped the referee.
- Honest nodes lose nothing to a wrong p: the referee blames only when its re-execution
  reproduces and the rows are independent, so slashing is only ever of a proven liar.
- Checks and canaries are like tasks: random ids, queued in their job's turn, a canary's input
  reshuffled, and (decoys, below) a check's size is an ordinary task's size too. An untrusted
  node's shard's canary is leased with the shard, to another node (canaries.py): the draw is
  the one examine made after the result (the same secret, task id and attempt, the same
  canary_rate per checked result), it counts only once the result's check verifies, and the
  node whose shard it is never sees it, so it learns nothing earlier than before. Recognising a
  check would help only a checker, never the node being checked: a checker that lies against
  an honest subject is caught by the referee; one that agrees with a trusted ring-mate's lie
  (both trusted, drawn as its checker, and told the lie) recognises the check by its rows'
  content anyway, which is what canaries, unrecognisable full shards, are there to catch.

Hiding a check's size (issue 11, item 3): built as decoys (services/verification/decoys.py,
repositories/ledger/decoys.py). Figures for the shape of benchmarks.verification: 98,304 rows in
4,096-row shards, T = 24 shards.
- Threat: a node that sees an m-row task knows it is a check. Who gains: only a checker (see
  above), e.g. one that answers checks without running them.
- Rejected: padding each check to a shard's size with rows of known answers (a check costs a
  whole task: +100% compute for new nodes, over budget), and varying shard sizes over a range
  covering m (a check is still always exactly m rows unless checks follow the same law, which
  is padding's cost again).
- Built: the planner carves D ordinary tasks of exactly m rows out of the shards (the same
  rows, no row computed twice, tasks still in row order; at random places, from the T - 1 shards
  that are always full, each keeping more than m rows). D = ceil(decoys x T), `decoys` a policy
  field in [0, 4], none unless the submitter asks (see Cost for why). At 1 (D = T) an m-row
  task is a check with probability C / (C + D) for C = r(T + D) checks at check rate r: 1/6 for
  trusted ones (r = 0.1); for new nodes (r = 1) it was 2/3, and is now 0 for inference (their
  checks are the referee's alone, no task). Decoys are checked like any task (a decoy's
  check re-runs all its m rows, else its rows could be changed unseen), but their checks do not
  count toward the detection target: the design's first idea (m sized for T + D tasks: 10 rows,
  not 20) fails against a cheater that leaves its decoys alone (it sees they are as small as
  checks) and corrupts only shards,
  whose checks would then re-run half the rows (91% per job, not 99%). So m stays what the job
  asks without decoys, detection and stake are counted over the shards, and the T + D checks
  must fit the 5% budget: (T + D)·m ≤ T·budget_rows(S), which caps D. The job's stored policy
  pins m (spot_rows) so every check has exactly that size whatever task it samples. A job whose
  checks are at the budget's limit already (small shards: 500-row shards, 12-row checks), whose
  shards cannot hold D decoys (a large spot_rows, one shard) or with decoys 0 has none
  (tensorgrid.spec.verification.decoy_plan).
- Paid by rows: a decoy earns one whole reward with probability m / shard rows, drawn from the
  OS CSPRNG once per attempt when it is paid (accepted unchecked, or its check settles), and a
  checker wins with probability (rows it re-ran / shard rows) in a job with decoys, so checking
  a decoy earns what checking m rows of a shard does. Wins come out of the verification fee
  (fee_tasks funds checks of T + D tasks, the D decoys and two standard deviations), never past
  it and never from the shards' rewards; every credit and charge stays a whole reward, so the
  contracts, epochs and "charged == claimed" are unchanged.
- Cost: D more tasks (leases, fetches, receipts, one forward call each: a call's fixed part,
  ≈ 2.5 ms against ≈ 160 ms for a shard) and D more checks of m rows (twice the check rows at
  D = T). Measured by benchmarks.verification on a shared 2-core machine: 4.5% extra compute
  at 99.3% detection (checks 4.0%, the decoys' calls 0.5%) at load 3-4.5 and 14.0% at 99.25%
  (11.6% and 2.4%) at load 6-9, against 7.3% and 4.1% at 99.2% before decoys in the same
  sessions; 2x replication 101-104%. On a quiet machine (same run): no decoys 4.2% at 99.2%,
  decoys 1 (D = T = 24) 10.0% at 99.45% (checks 8.4%, decoys' calls 1.6%), replication 102.1%.
  A 20-row check costs mostly a forward call's fixed part, and decoys double the checks, so D = T
  is past the 5% budget, which counts rows only: decoys are the submitter's to ask for (default
  0). Counting a call's fixed cost (timed at intake) in the budget would cap D where calls are
  dear and could let a default of some decoys fit.
- Generation: a shard carries its prompts' sampling seeds, not their positions in the job, and
  the job's seed does not reach nodes, so a check's sampled prompts look like a shard's (the
  same tensors, seeds that say nothing of positions); decoys hide the size there too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from tensorgrid.spec import InferenceSpec, VerificationSpec
from tensorgrid.spec.verification import detection_rows

DEFAULT = VerificationSpec()


def escape_probability(f: float, m: int) -> float:
    """Chance that m sampled rows miss every corrupted row when a fraction f is corrupted."""
    return (1.0 - f) ** m


def required_stake(p: float, reward_wei: int) -> int:
    """The smallest stake S (wei) with p*S > reward: cheating then loses money in expectation."""
    if reward_wei <= 0:
        return 0
    if p <= 0:
        raise ValueError("with detection probability 0 no stake makes cheating unprofitable")
    return math.floor(reward_wei / Fraction(p)) + 1  # exact: wei amounts exceed a float's precision


@dataclass(frozen=True)
class VerificationPolicy:
    """The policy of one job: a VerificationSpec resolved against the job's shape."""

    spec: VerificationSpec
    tasks: int
    shard_rows: int
    reward_per_task_wei: int = 0
    decoys: int = 0  # of `tasks`, the decoys: each paid one reward with probability m / shard rows

    @classmethod
    def for_job(cls, spec: InferenceSpec, tasks: int) -> VerificationPolicy:
        return cls(spec.verification or DEFAULT, tasks, spec.shard_rows, spec.reward_per_task_wei)

    @property
    def enabled(self) -> bool:
        return self.spec.mode != "none" and self.tasks > 0

    def check_rate(self, consecutive_valid: int) -> float:
        """Probability that a node with this record has its next result checked."""
        if not self.enabled:
            return 0.0
        if self.spec.mode == "replicate" or consecutive_valid < self.spec.trust_after:
            return 1.0
        return max(self.spec.check_floor, 1.0 / max(1, consecutive_valid))

    def sample_rows(self, rate: float, task_rows: int) -> int:
        """Rows m to re-execute when a task of task_rows rows is checked.

        m is sized for a node checked every time (every node starts so): a node doing all T
        tasks and corrupting a fraction f of rows is caught in the job with probability
        >= target. Trust lowers how often a node is checked, not m, so checks get cheaper as
        trust grows and a trusted node's lower per-job detection is covered by its stake
        (see required_stake_wei). `rate` is accepted for policies that size m by it.
        """
        del rate
        if self.spec.mode == "replicate":
            return task_rows
        return detection_rows(self.spec, self.tasks, task_rows)

    def detection(self, rate: float) -> float:
        """Per-job probability of catching a node at this check rate that corrupts a fraction f of rows."""
        if not self.enabled:
            return 0.0
        m = self.sample_rows(rate, self.shard_rows)
        caught_per_task = rate * (1.0 - escape_probability(self.spec.corrupt_fraction, m))
        # over the shards only: a cheater can leave its decoys (as small as checks) alone
        return 1.0 - (1.0 - caught_per_task) ** (self.tasks - self.decoys)

    @property
    def worst_detection(self) -> float:
        """Detection against the most trusted node (checked at the floor rate)."""
        return self.detection(self.check_rate(1 << 30))

    @property
    def required_stake_wei(self) -> int:
        """Stake a node needs to take this job's tasks: the whole job's reward over worst-case p
        (a reward per shard, and for the decoys what their draws can win: a reward per m / shard
        rows of them, rounded up)."""
        m = self.sample_rows(1.0, self.shard_rows) if self.decoys else 0
        decoy_rewards = -(-self.decoys * m // self.shard_rows) if self.decoys and self.shard_rows else 0
        reward = self.reward_per_task_wei * (self.tasks - self.decoys + decoy_rewards)
        if not self.enabled or reward == 0:
            return 0
        p = self.worst_detection
        return required_stake(p, reward) if p > 0 else 2**255
