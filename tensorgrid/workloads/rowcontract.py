"""The terms of the determinism contract (tensorgrid.workloads.determinism): how large a probe
may be and what it found. No torch here: the coordinator sizes probes and reads their verdicts,
while its sandboxed child runs them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEADLINE_S", "MAX_BATCH", "PROBE_BUDGET", "SAMPLES", "Determinism", "budget_batch"]

MAX_BATCH = 256  # rows of the shard's first batch the probe runs (the batch composition)
SAMPLES = 4  # rows run alone
DEADLINE_S = 20.0
# The probe's share of a job's compute (rows): it runs before any node may start, so on a
# job of a few hundred rows of a large model a 256-row probe would add a fifth to its time.
PROBE_BUDGET = 0.01


def budget_batch(job_rows: int) -> int:
    """The largest probe batch whose runs (the batch three times, up to SAMPLES rows alone and
    again together) stay within PROBE_BUDGET of a job of job_rows rows; never under 2 rows
    (the fewest that can depend on each other), never over MAX_BATCH."""
    return max(2, min(MAX_BATCH, int((job_rows * PROBE_BUDGET - 2 * SAMPLES) // 3)))


@dataclass(frozen=True)
class Determinism:
    """The probe's verdict. `finished` False: the time box ran out (or the program could not
    run here) before every test ran; `independent` then covers only the tests that did."""

    independent: bool
    reason: str  # why not, in words a submitter can act on ("" when independent)
    rows: int  # rows in the probed batch
    finished: bool = True
    batch_s: float = 0.0  # at least what a whole run of the probed batch takes (0: none ran): intake's estimate
