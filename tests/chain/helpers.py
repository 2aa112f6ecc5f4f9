"""Small helpers shared by the chain tests."""

from __future__ import annotations

import pytest

from coordinator.repositories.ledger import outbox as ob
from coordinator.services.outbox import Outbox
from tensorgrid.chain import ChainClient, ContractReverted


def revert(name: str) -> pytest.RaisesExc[ContractReverted]:
    """Expect a ContractReverted carrying the Solidity custom error `name`."""
    return pytest.raises(ContractReverted, check=lambda e: e.error == name)


def open_job(submitter: ChainClient, job_id: str, budget: int, lifetime: int = 10_000, reward: int = 1) -> int:
    """Create a job due `lifetime` seconds from now (chain time) paying `reward` wei per task; return
    its deadline. The default reward of 1 wei makes a charge's task count equal its wei."""
    deadline = submitter.chain_time() + lifetime
    submitter.create_job(job_id, "ab" * 32, deadline, budget, reward_per_task=reward)
    return deadline


class Crash(BaseException):
    """Stands for the process dying at a chosen point (not an Exception: nothing catches it)."""


class CrashBeforeBroadcast(Outbox):
    def _broadcast(self, item: ob.OutboxItem) -> None:
        raise Crash()


class CrashAfterBroadcast(Outbox):
    def _broadcast(self, item: ob.OutboxItem) -> None:
        super()._broadcast(item)
        raise Crash()
