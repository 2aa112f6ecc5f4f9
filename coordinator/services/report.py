"""A job's verification report: its policy, how its checks ended, the odds of catching a cheat,
the stake its nodes need, the slashes it caused, what its checkers were paid, its decoys
(how many, and what their pay by rows came to), and what the claimants of its failed tasks were
paid. The odds are
the job kind's to compute."""

from __future__ import annotations

import dataclasses

from coordinator.repositories.ledger import claim_pay, decoys, escrow, slashing
from coordinator.repositories.store import Store
from coordinator.repositories.verification import fees
from coordinator.services.kind import KindLookup
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import JobInfo, JobVerification


class Reports:
    def __init__(self, store: Store, kinds: KindLookup) -> None:
        self.store = store
        self.kinds = kinds

    def with_verification(self, job: JobInfo) -> JobInfo:
        """`job` with its verification report: policy, detection, required stake, checks, slashes (blocking)."""
        stored = self.store.verification.job_policy(job.job_id)
        checks = self.store.verification.job_checks(job.job_id)
        with self.store.engine.connect() as conn:
            slashes, slashed_wei = slashing.job_slashes(conn, job.job_id)
            fee_budget_wei, fee_paid_wei = fees.fee_budget(conn, job.job_id)
            n_decoys, drawn, decoy_paid_wei = decoys.decoy_pay(conn, job.job_id)
            claims_drawn, claims_paid_wei = claim_pay.claims_pay(conn, job.job_id)
            withheld = job.result is not None and escrow.result_withheld(conn, job.job_id)
        if withheld:  # no free work: the result is released once its payment is secured on chain
            job = dataclasses.replace(job, result=None)
        mode, detection, stake = "none", 0.0, 0
        audited = self.kinds.for_job(job.kind).audits(job)
        if audited is not None:  # a kind that checks its results itself (training's replays)
            mode, checks = audited[0].mode, {**checks, **audited[1]}
        elif stored is not None:
            spec = VerificationSpec(**stored[0])
            mode, stake = spec.mode, stored[1]
            shards = dataclasses.replace(job, tasks_total=job.tasks_total - n_decoys)  # the odds are over shards
            detection = self.kinds.for_job(job.kind).detection(shards, spec)
        report = JobVerification(
            mode, checks, detection, stake, slashes, slashed_wei, fee_budget_wei, fee_paid_wei,
            n_decoys, drawn, decoy_paid_wei, claims_drawn, claims_paid_wei,
        )  # fmt: skip
        return dataclasses.replace(job, verification=report)
