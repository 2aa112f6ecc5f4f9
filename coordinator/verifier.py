"""Verification, first rung of the ladder: identity and integrity of every result.

A result is accepted only when the receipt names the leased task and attempt, the input
hash is the task's, the signature is the lease holder's, the bytes hash to the receipt's
output hash, and the output has the shape the task promises. Later rungs (spot-checks,
quorum, canaries) plug in behind this one.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.errors import Forged, Rejected
from coordinator.storage import TaskRecord
from tensorgrid.crypto import verify_receipt
from tensorgrid.errors import TensorGridError
from tensorgrid.types import Domain, Receipt
from tensorgrid.workloads import tensorfile


class Verifier:
    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def check_receipt(self, task: TaskRecord, node: str, receipt: Receipt) -> None:
        """Cheap checks before the output bytes are received. Raises Rejected."""
        if receipt.job_id != task.job_id:
            raise Forged("receipt names another job than the task's")
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

    def output_rows(self, kind: str, path: Path) -> int | None:
        """Structural check of a received output; returns its row count (inference). Raises Rejected."""
        if kind != "inference":
            return None
        try:
            return tensorfile.batch_rows(tensorfile.read_header(path))
        except TensorGridError as e:
            raise Rejected(f"output is not a valid tensor file: {e}") from None
