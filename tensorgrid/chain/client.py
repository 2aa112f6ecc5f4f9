"""ChainClient: typed wrappers over NodeRegistry and Settlement for one account.

Every write returns a TxResult (hash, block, gas used) once mined, or raises
ContractReverted naming the contract's custom error (e.g. "OverBudget", "InvalidProof",
"AccessControlUnauthorizedAccount"). Ids and hashes are bytes32: pass 64 hex digits
(with or without 0x) or 32 raw bytes. Amounts are int wei, never floats.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from tensorgrid.chain._tx import ErrorDecoder, Transactor, TxResult
from tensorgrid.chain.artifacts import load_artifact
from tensorgrid.chain.deploy import Deployment
from tensorgrid.chain.encoding import Bytes32, evidence_key, to_bytes32
from tensorgrid.chain.errors import ChainError, ContractReverted
from tensorgrid.crypto import normalize_address
from tensorgrid.types import Receipt


class JobStatus(IntEnum):
    NONE = 0
    OPEN = 1
    COMPLETED = 2
    CANCELLED = 3
    RECLAIMED = 4


class SlashState(IntEnum):
    NONE = 0
    PENDING = 1
    VETOED = 2
    EXECUTED = 3


@dataclass(frozen=True)
class JobInfo:
    submitter: str
    deadline: int
    status: JobStatus
    locked: bool  # the coordinator leased a task: no cancel before the deadline
    reward_per_task: int
    max_tasks: int  # the tasks the budget pays for
    tasks_charged: int
    spec_hash: str
    result_hash: str

    @property
    def budget(self) -> int:
        return self.reward_per_task * self.max_tasks

    @property
    def charged(self) -> int:
        return self.reward_per_task * self.tasks_charged

    @property
    def remaining(self) -> int:
        return self.budget - self.charged if self.status == JobStatus.OPEN else 0


@dataclass(frozen=True)
class SlashProposal:
    id: str  # hex of keccak256(abi.encode(taskId, attempt))
    node: str
    executable_at: int
    state: SlashState
    beneficiary: str
    amount: int
    job_id: str
    task_id: str
    attempt: int


@dataclass(frozen=True)
class NodeInfo:
    stake: int
    unbonding: int
    unbond_at: int
    registered: bool


@dataclass(frozen=True)
class RootInfo:
    root: str
    posted_at: int
    revoked: bool


class ChainClient:
    """The coordinator's, a node's or a submitter's handle on the contracts."""

    def __init__(self, w3: Web3, deployment: Deployment, private_key: str | bytes, *, timeout: float = 120.0):
        registry_abi = load_artifact("NodeRegistry").abi
        settlement_abi = load_artifact("Settlement").abi
        self.w3 = w3
        self.deployment = deployment
        self.registry = w3.eth.contract(address=Web3.to_checksum_address(deployment.node_registry), abi=registry_abi)
        self.settlement = w3.eth.contract(address=Web3.to_checksum_address(deployment.settlement), abi=settlement_abi)
        self._tx = Transactor(w3, private_key, ErrorDecoder(registry_abi, settlement_abi), timeout=timeout)
        self.address: str = self._tx.address

    @classmethod
    def connect(cls, rpc_url: str, deployment: Deployment, private_key: str | bytes) -> ChainClient:
        """A client over a fresh HTTP connection to `rpc_url`."""
        return cls(Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60})), deployment, private_key)

    # -- chain -------------------------------------------------------------------------------

    def chain_time(self) -> int:
        """Timestamp of the latest block: deadlines and windows are measured against it."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def balance(self, address: str | None = None) -> int:
        """Wei balance of `address` (default: this client's account)."""
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address or self.address)))

    def pending_nonce(self) -> int:
        """This account's transaction count including the node's pending pool."""
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(self.address), "pending"))

    def build_signed(self, call: Any, action: str, *, nonce: int, value: int = 0) -> tuple[bytes, str]:
        """Sign `call` (e.g. from post_root_call) with `nonce` without sending: (raw tx, 0x hash).

        Raises ContractReverted, naming the error, if the call would revert now.
        """
        return self._tx.build_signed(call, action, nonce=nonce, value=value)

    def decode_revert(self, exc: ContractLogicError, action: str) -> ContractReverted:
        """Name the custom error of a revert raised by a call on these contracts."""
        return self._tx.decode_revert(exc, action)

    # -- NodeRegistry ------------------------------------------------------------------------

    def register(self, stake: int) -> TxResult:
        return self._tx.send(self.registry.functions.register(), "register", value=stake)

    def add_stake(self, amount: int) -> TxResult:
        return self._tx.send(self.registry.functions.addStake(), "addStake", value=amount)

    def request_unbond(self, amount: int) -> TxResult:
        return self._tx.send(self.registry.functions.requestUnbond(amount), "requestUnbond")

    def withdraw(self) -> TxResult:
        return self._tx.send(self.registry.functions.withdraw(), "withdraw")

    def propose_slash(self, receipt: Receipt, amount: int, correct_output_hash: Bytes32) -> TxResult:
        """Coordinator only: propose to slash the signer of `receipt` (which must carry its signature)."""
        return self._tx.send(self.propose_slash_call(receipt, amount, correct_output_hash), "proposeSlash")

    def propose_slash_call(self, receipt: Receipt, amount: int, correct_output_hash: Bytes32) -> Any:
        """The unsent proposeSlash call (for build_signed)."""
        if not receipt.signature:
            raise ChainError(f"receipt for task {receipt.task_id} carries no signature")
        return self.registry.functions.proposeSlash(
            receipt_tuple(receipt), receipt.signature, amount, to_bytes32(correct_output_hash)
        )

    def execute_slash(self, proposal_id: Bytes32) -> TxResult:
        """Anyone, after the slash delay: make a proposal's amount its beneficiary's to withdraw."""
        return self._tx.send(self.execute_slash_call(proposal_id), "executeSlash")

    def execute_slash_call(self, proposal_id: Bytes32) -> Any:
        return self.registry.functions.executeSlash(to_bytes32(proposal_id))

    def veto_slash(self, proposal_id: Bytes32) -> TxResult:
        """Guardian only, before the delay is over: cancel a proposal; the node keeps its stake."""
        return self._tx.send(self.registry.functions.vetoSlash(to_bytes32(proposal_id)), "vetoSlash")

    def withdraw_proceeds(self, to: str | None = None) -> TxResult:
        """Collect this account's slash proceeds (to `to`, default this account)."""
        return self._tx.send(self.registry.functions.withdrawProceeds(_addr(to or self.address)), "withdrawProceeds")

    def proceeds(self, beneficiary: str) -> int:
        return int(self.registry.functions.proceeds(_addr(beneficiary)).call())

    def slash_proposal(self, proposal_id: Bytes32) -> SlashProposal:
        p = self.registry.functions.slashProposal(to_bytes32(proposal_id)).call()
        node, executable_at, state, beneficiary, amount, job_id, task_id, attempt = p
        return SlashProposal(
            to_bytes32(proposal_id).hex(),
            str(node),
            int(executable_at),
            SlashState(state),
            str(beneficiary),
            int(amount),
            bytes(job_id).hex(),
            bytes(task_id).hex(),
            int(attempt),
        )

    def registry_owed(self) -> int:
        """What NodeRegistry owes: stakes, pending slashes, unpaid proceeds (equals its balance)."""
        return int(self.registry.functions.owed().call())

    def slash_proposed_in(self, tx_hash: str) -> list[tuple[str, str, int, int, int]]:
        """The SlashProposed events of a mined tx: (proposal id hex, node, attempt, wei taken, executable at)."""
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        events = self.registry.events.SlashProposed().process_receipt(receipt, errors=DISCARD)
        return [
            (
                bytes(e["args"]["id"]).hex(),
                str(e["args"]["node"]),
                int(e["args"]["attempt"]),
                int(e["args"]["amount"]),
                int(e["args"]["executableAt"]),
            )
            for e in events
        ]

    def slashed_in(self, tx_hash: str) -> list[tuple[str, str, str, int, int, str]]:
        """The Slashed events (executed slashes) of a mined tx:
        (node, job id hex, task id hex, attempt, wei, beneficiary)."""
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        events = self.registry.events.Slashed().process_receipt(receipt, errors=DISCARD)
        return [
            (
                str(e["args"]["node"]),
                bytes(e["args"]["jobId"]).hex(),
                bytes(e["args"]["taskId"]).hex(),
                int(e["args"]["attempt"]),
                int(e["args"]["amount"]),
                str(e["args"]["beneficiary"]),
            )
            for e in events
        ]

    def stake_of(self, node: str) -> int:
        return int(self.registry.functions.stakeOf(_addr(node)).call())

    def node_info(self, node: str) -> NodeInfo:
        stake, unbonding, unbond_at, registered = self.registry.functions.nodeInfo(_addr(node)).call()
        return NodeInfo(int(stake), int(unbonding), int(unbond_at), bool(registered))

    def is_active(self, node: str) -> bool:
        return bool(self.registry.functions.isActive(_addr(node)).call())

    def evidence_used(self, task_id: Bytes32, attempt: int) -> bool:
        """Whether (task_id, attempt) has already served as slashing evidence."""
        return bool(self.registry.functions.slashedEvidence(evidence_key(task_id, attempt)).call())

    def receipt_digest(self, receipt: Receipt) -> bytes:
        """The digest the contract computes for `receipt` (to cross-check off-chain signing)."""
        return bytes(self.registry.functions.receiptDigest(receipt_tuple(receipt)).call())

    # -- JobEscrow (part of Settlement) -------------------------------------------------------

    def create_job(
        self, job_id: Bytes32, spec_hash: Bytes32, deadline: int, budget: int, *, reward_per_task: int
    ) -> TxResult:
        """Fund a job's escrow with `budget` wei, a whole number of tasks at `reward_per_task` wei."""
        fn = self.settlement.functions.createJob(to_bytes32(job_id), to_bytes32(spec_hash), deadline, reward_per_task)
        return self._tx.send(fn, "createJob", value=budget)

    def lock_job_call(self, job_id: Bytes32) -> Any:
        """Coordinator only, unsent: lock a job's escrow (no cancel before its deadline)."""
        return self.settlement.functions.lock(to_bytes32(job_id))

    def lock_job(self, job_id: Bytes32) -> TxResult:
        return self._tx.send(self.lock_job_call(job_id), "lock")

    def release_job_call(self, job_id: Bytes32) -> Any:
        """Coordinator only, unsent: close a job without a result, refunding what was not charged."""
        return self.settlement.functions.release(to_bytes32(job_id))

    def release_job(self, job_id: Bytes32) -> TxResult:
        return self._tx.send(self.release_job_call(job_id), "release")

    def cancel(self, job_id: Bytes32) -> TxResult:
        return self._tx.send(self.settlement.functions.cancel(to_bytes32(job_id)), "cancel")

    def reclaim(self, job_id: Bytes32) -> TxResult:
        return self._tx.send(self.settlement.functions.reclaim(to_bytes32(job_id)), "reclaim")

    def record_result(self, job_id: Bytes32, result_hash: Bytes32) -> TxResult:
        return self._tx.send(self.record_result_call(job_id, result_hash), "recordResult")

    def record_result_call(self, job_id: Bytes32, result_hash: Bytes32) -> Any:
        """The unsent recordResult call (for build_signed)."""
        return self.settlement.functions.recordResult(to_bytes32(job_id), to_bytes32(result_hash))

    def job(self, job_id: Bytes32) -> JobInfo:
        submitter, deadline, status, locked, reward, max_tasks, tasks_charged, spec, result = (
            self.settlement.functions.getJob(to_bytes32(job_id)).call()
        )
        return JobInfo(
            submitter,
            int(deadline),
            JobStatus(status),
            bool(locked),
            int(reward),
            int(max_tasks),
            int(tasks_charged),
            bytes(spec).hex(),
            bytes(result).hex(),
        )

    def remaining_budget(self, job_id: Bytes32) -> int:
        return int(self.settlement.functions.remainingBudget(to_bytes32(job_id)).call())

    # -- Settlement ---------------------------------------------------------------------------

    def post_root(self, epoch: int, root: Bytes32, tasks: Iterable[tuple[Bytes32, int]] = ()) -> TxResult:
        """Coordinator only: post `root` for `epoch`, charging (job id, accepted tasks) pairs into
        the pool, each task at its job's reward."""
        return self._tx.send(self.post_root_call(epoch, root, tasks), "postRoot")

    def post_root_call(self, epoch: int, root: Bytes32, tasks: Iterable[tuple[Bytes32, int]] = ()) -> Any:
        """The unsent postRoot call (for build_signed)."""
        pairs = list(tasks)
        return self.settlement.functions.postRoot(
            epoch, to_bytes32(root), [to_bytes32(j) for j, _ in pairs], [int(a) for _, a in pairs]
        )

    def revoke_root(self, epoch: int) -> TxResult:
        """Coordinator or guardian: revoke a root still inside its challenge window."""
        return self._tx.send(self.settlement.functions.revokeRoot(epoch), "revokeRoot")

    def claim(self, cumulative: int, proof: Sequence[bytes]) -> TxResult:
        """Collect cumulative - already claimed, proven against the newest claimable root."""
        return self._tx.send(self.settlement.functions.claim(cumulative, [bytes(p) for p in proof]), "claim")

    def claimable_root(self) -> tuple[int, str]:
        """(epoch, root hex) of the newest root past its challenge window; (0, zeros) if none."""
        epoch, root = self.settlement.functions.claimableRoot().call()
        return int(epoch), bytes(root).hex()

    def root_of(self, epoch: int) -> RootInfo:
        root, posted_at, revoked = self.settlement.functions.rootOf(epoch).call()
        return RootInfo(bytes(root).hex(), int(posted_at), bool(revoked))

    def last_epoch(self) -> int:
        return int(self.settlement.functions.lastEpoch().call())

    def claimed(self, node: str) -> int:
        return int(self.settlement.functions.claimed(_addr(node)).call())

    def owed(self) -> int:
        """What Settlement owes: open escrows plus the unclaimed pool (equals its balance)."""
        return int(self.settlement.functions.owed().call())

    def grant_role(self, contract: str, role: str, account: str) -> TxResult:
        """Admin only: grant `role` ("COORDINATOR_ROLE", "GUARDIAN_ROLE", …) on "registry"/"settlement"."""
        target = self.registry if contract == "registry" else self.settlement
        role_id = Web3.keccak(text=role) if role != "DEFAULT_ADMIN_ROLE" else bytes(32)
        return self._tx.send(target.functions.grantRole(role_id, _addr(account)), f"grantRole {role}")


def receipt_tuple(receipt: Receipt) -> tuple[bytes, bytes, int, bytes, bytes, bytes]:
    """The ABI tuple of NodeRegistry.Receipt for a tensorgrid Receipt."""
    return (
        to_bytes32(receipt.job_id),
        to_bytes32(receipt.task_id),
        receipt.attempt,
        to_bytes32(receipt.input_hash),
        to_bytes32(receipt.output_hash),
        to_bytes32(receipt.commitment),
    )


def _addr(address: str) -> str:
    return normalize_address(address)
