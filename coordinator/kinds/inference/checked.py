"""The job row of a sharded, spot-checked kind (inference, and generation, which shards prompts
the same way): the verification policy it is checked under, with decoys taken into account."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from typing import Any

from coordinator.kinds.base import new_job
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.services.verification.policy import VerificationPolicy


def checked_job(
    spec: Any,
    spec_json: bytes,
    submitter: str,
    sh: str,
    job_id: str,
    settings: dict[str, Any],
    policy: VerificationPolicy,
    tasks: list[NewTask],
    m: int,
) -> NewJob:
    """The job row for `tasks` (shards and any decoys carved from them, m rows each). In a job
    with decoys every check has the decoys' m rows, whatever task it samples, so a check is not
    told from a decoy by its size."""
    n_decoys = sum(1 for t in tasks if t.decoy_unit_rows)
    if n_decoys:
        policy = dataclasses.replace(policy, spec=dataclasses.replace(policy.spec, spot_rows=m), decoys=n_decoys)
    policy_json, stake = "", 0
    if policy.enabled:
        policy_json, stake = json.dumps(asdict(policy.spec), sort_keys=True), policy.required_stake_wei
    return new_job(
        spec,
        spec_json,
        submitter,
        sh,
        job_id,
        model=spec.model,
        settings=settings,
        verification_json=policy_json,
        required_stake_wei=stake,
    )
