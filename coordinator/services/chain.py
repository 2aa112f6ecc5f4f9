"""What the coordinator reads from the chain before it acts: funded escrows, staked nodes.

Reads are blocking HTTP calls, so the api runs them on the work pool. Writes never go
through here: every chain write goes through the ledger's persistent outbox.
"""

from __future__ import annotations

import time
from pathlib import Path

from coordinator.errors import Conflict, PermissionDenied
from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.chain.deploy import Deployment, load_deployment
from tensorgrid.crypto import Signer
from tensorgrid.errors import TensorGridError

NODE_CACHE_S = 30.0


class ChainGate:
    def __init__(self, rpc_url: str, deployment: Deployment, signer: Signer) -> None:
        self.rpc_url = rpc_url
        self.deployment = deployment
        self.client = ChainClient.connect(rpc_url, deployment, signer.private_key)
        self._active: dict[str, float] = {}
        if deployment.coordinator.lower() != signer.address.lower():
            raise TensorGridError(
                f"this coordinator's key is {signer.address}, but the contracts at {deployment.settlement} "
                f"name {deployment.coordinator} as coordinator: start it with that key (--data-dir's "
                "coordinator.key, or the systemd credential coordinator.key)"
            )

    @classmethod
    def open(cls, rpc_url: str, deployment_path: Path, signer: Signer) -> ChainGate:
        return cls(rpc_url, load_deployment(deployment_path), signer)

    def check_escrow(
        self, job_id: str, spec_hash: str, submitter: str, required_wei: int, reward_per_task_wei: int | None = None
    ) -> int:
        """Raise unless the job's escrow is open, matches the spec, covers `required_wei` and (if
        given) prices a task at `reward_per_task_wei`, as the ledger will charge it; returns the
        escrow's budget in wei."""
        job = self.client.job(job_id)
        hint = "fund it with the SDK's submit (or tensorgrid.chain createJob) before submitting"
        if job.status == JobStatus.NONE:
            raise Conflict(f"no escrow on chain for job {job_id}: {hint}")
        if job.status != JobStatus.OPEN:
            raise Conflict(f"the escrow for job {job_id} is {job.status.name.lower()}, not open")
        if job.submitter.lower() != submitter.lower():
            raise PermissionDenied(f"the escrow for job {job_id} was funded by {job.submitter}, not {submitter}")
        if job.spec_hash.removeprefix("0x").lower() != spec_hash:
            raise Conflict(f"the escrow for job {job_id} names another spec hash ({job.spec_hash})")
        if reward_per_task_wei is not None and job.reward_per_task != reward_per_task_wei:
            raise Conflict(
                f"the escrow for job {job_id} pays {job.reward_per_task} wei per task; the spec says "
                f"{reward_per_task_wei}: fund it with the spec's reward_per_task_wei"
            )
        if job.locked:
            raise Conflict(f"the escrow for job {job_id} is already locked by earlier work: it cannot start afresh")
        if job.remaining < required_wei:
            raise Conflict(
                f"the escrow for job {job_id} holds {job.remaining} wei; the job needs {required_wei} "
                f"(reward per task × tasks)"
            )
        if job.deadline <= self.client.chain_time():
            raise Conflict(f"the escrow for job {job_id} is past its deadline")
        return job.budget

    def recently_active(self, address: str) -> bool:
        """True if check_node passed for this node within the last NODE_CACHE_S (no chain read)."""
        return self._active.get(address, 0.0) > time.monotonic()

    def check_node(self, address: str) -> None:
        """Raise unless the node is registered with at least the minimum stake (cached briefly)."""
        now = time.monotonic()
        if self._active.get(address, 0.0) > now:
            return
        if not self.client.is_active(address):
            raise PermissionDenied(
                f"node {address} has no active stake on NodeRegistry {self.deployment.node_registry}: "
                f"run `tensorgrid-node run` with --chain-rpc and --deployment to stake"
            )
        self._active[address] = now + NODE_CACHE_S
