"""Verification, first rung of the ladder: identity and integrity of every result.

A result is accepted only when the receipt names the leased task and attempt, the input
hash is the task's, the signature is the lease holder's, the bytes hash to the receipt's
output hash; the job's kind then checks the output's shape (Kind.check_output). Later rungs
(spot-checks, quorum, canaries) plug in behind these through the kind's `examine`.
"""

from __future__ import annotations

from coordinator.errors import Forged
from coordinator.repositories.tasks import TaskRecord, lost_lease
from tensorgrid.crypto import verify_receipt
from tensorgrid.errors import TensorGridError
from tensorgrid.types import Domain, Receipt


class Verifier:
    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def check_receipt(self, task: TaskRecord, node: str, receipt: Receipt) -> None:
        """Cheap checks before the output bytes are received. Raises Rejected."""
        if receipt.job_id != task.job_id:
            raise Forged("receipt names another job than the task's")
        if not lost_lease(task, node, receipt.attempt):  # a lease lost before its result: results.claim
            if task.node != node or task.attempt != receipt.attempt:
                raise Forged("this node does not hold that lease")
            if task.state != "leased":
                raise Forged(f"the lease is over (task is {task.state})")
        if receipt.input_hash != task.input.sha256:
            raise Forged("receipt's input hash is not the task's input")
        try:
            verify_receipt(self.domain, receipt, node)
        except TensorGridError as e:
            raise Forged(f"bad receipt signature: {e}") from None
