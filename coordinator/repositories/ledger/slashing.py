"""Slashing: a caught node's own signed receipt, proposed to NodeRegistry through the outbox.

`queue_slash` runs inside the transaction that catches the node (verification checks,
the training audit) and queues one proposal per (task_id, attempt), the contract's
unit of evidence, carrying the receipt exactly as the node signed it (the EIP-712 Receipt
of tensorgrid.crypto.receipts: job id, task id, attempt, input hash, output hash,
commitment) with its 65-byte signature. The contract recovers the signer from it, so a
receipt that was not signed by a registered node slashes nobody.

Amount: the stake the job's verification policy requires of its nodes (`job_policies.
required_stake_wei`) when that is set, else ten times the job's reward per task. That
stake is what makes cheating unprofitable (p·S > R), so a caught node forfeits it; the
contract caps one proposal at a fraction of the node's stake (maxSlashBps, set at deploy).

Beneficiary: the job's submitter, as the contract recorded it at createJob (the coordinator
does not choose it; it is kept here for the record). Their escrow paid for a result that was
wrong and their job was delayed re-doing it: they are the party harmed. They withdraw the
proceeds themselves (pull), so a beneficiary that refuses ether blocks nothing.

Life of a slash (the `slashes` row):
    queued --proposeSlash confirmed--> proposed --executeSlash after the delay--> confirmed
           --revert--> failed                   --the guardian vetoed it--------> vetoed
A proposal is executed by `queue_due_slashes` on the settlement timer once its delay (read
from the SlashProposed event) is over. Failures are final and never block the outbox.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.db.sql import insert_ignore
from coordinator.repositories.ledger import outbox as ob
from tensorgrid.chain.encoding import evidence_key
from tensorgrid.chain.errors import ContractReverted
from tensorgrid.crypto import normalize_address
from tensorgrid.digests import is_hex32

if TYPE_CHECKING:
    from tensorgrid.chain.client import ChainClient

log = logging.getLogger("tensorgrid.coordinator.ledger")

ACTION = "slash"  # proposeSlash
EXECUTE = "execute_slash"
SLASH_ACTIONS = (ACTION, EXECUTE)
_NOT_YET = "DelayNotOver"
RETRY_EARLY_MS = 5000  # an execution refused as early is tried again this much later
FALLBACK_REWARD_MULTIPLE = 10  # without a policy stake: slash this many rewards per task


def slash_key(task_id: str, attempt: int) -> str:
    """The outbox key of the slash for one piece of evidence (the contract's unit, too)."""
    return f"slash:{task_id}:{attempt}"


def queue_slash(
    conn: Connection, *, node: str, job_id: str, task_id: str, attempt: int, correct_output_sha: str, now_ms: int
) -> bool:
    """Queue an on-chain slash of `node` for its result of (task_id, attempt), in the caller's transaction.

    True if a slash is queued (now or by an earlier call: the key is idempotent). False, and
    nothing changes, when the job was not escrowed on chain (no price: the coordinator has no
    chain or the job is free), no signed receipt is stored for that attempt or it is not
    `node`'s, the job is unknown, the amount would be 0, or `correct_output_sha` equals the
    output the node signed (then the receipt proves nothing).
    """
    price = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == job_id)).first()
    if price is None:
        return False
    r = s.receipts
    rec = conn.execute(select(r).where((r.c.task_id == task_id) & (r.c.attempt == attempt))).first()
    job = conn.execute(select(s.jobs.c.submitter).where(s.jobs.c.job_id == job_id)).first()
    task_job = conn.execute(select(s.tasks.c.job_id).where(s.tasks.c.task_id == task_id)).scalar_one_or_none()
    correct = correct_output_sha.removeprefix("0x").lower()
    why = "the task belongs to another job" if task_job not in (None, job_id) else _refusal(rec, job, node, correct)
    amount = _amount(conn, job_id, int(price.reward_per_task_wei))
    if not why and amount <= 0:
        why = "the job is free: there is nothing to forfeit"
    if why:
        log.warning("no slash for task %s attempt %s of job %s: %s", task_id, attempt, job_id, why)
        return False
    key = slash_key(task_id, attempt)
    payload = _payload(rec, job_id, amount, correct, job.submitter)  # type: ignore[union-attr]
    ob.enqueue(conn, key, ACTION, payload, now_ms)
    row = dict(
        task_id=task_id,
        attempt=attempt,
        node=payload["node"],
        job_id=job_id,
        amount_wei=amount,
        beneficiary=payload["beneficiary"],
        correct_output=correct,
        state="queued",
        outbox_key=key,
        error="",
        created_ms=now_ms,
        updated_ms=now_ms,
    )
    insert_ignore(conn, s.slashes, [row])
    log.warning("slash of %s queued: task %s attempt %s, %s wei to %s", payload["node"], task_id, attempt, amount,
                payload["beneficiary"])  # fmt: skip
    return True


def _payload(rec: Any, job_id: str, amount: int, correct: str, submitter: str) -> dict[str, Any]:
    """Everything the slash transaction needs; wei as a decimal string."""
    return {
        "node": normalize_address(rec.node),
        "receipt": {  # the fields of the EIP-712 Receipt exactly as the node signed them
            "job_id": job_id,
            "task_id": rec.task_id,
            "attempt": int(rec.attempt),
            "input_hash": rec.input_hash,
            "output_hash": rec.output_hash,
            "commitment": rec.commitment,
        },
        "signature": bytes(rec.signature).hex(),
        "amount": str(amount),
        "correct_output_hash": correct,
        "beneficiary": normalize_address(submitter),  # for the record: the contract pays the job's submitter
    }


def _refusal(rec: Any, job: Any, node: str, correct: str) -> str:
    """Why no slash can be made from this evidence ("" if it can)."""
    if job is None:
        return "unknown job"
    if rec is None:
        return "no signed receipt is stored"
    if not rec.signature:
        return "the stored receipt carries no signature"
    if normalize_address(rec.node) != normalize_address(node):
        return f"the stored receipt is {rec.node}'s, not {node}'s"
    if not is_hex32(correct):
        return f"the correct output hash {correct!r} is not 64 hex digits"
    if correct == rec.output_hash.lower():
        return "the node's signed output equals the correct output"
    return ""


def _amount(conn: Connection, job_id: str, reward_per_task_wei: int) -> int:
    """The policy's required stake if > 0, else FALLBACK_REWARD_MULTIPLE rewards per task."""
    stake = conn.execute(
        select(s.job_policies.c.required_stake_wei).where(s.job_policies.c.job_id == job_id)
    ).scalar_one_or_none()
    if stake is not None and int(stake) > 0:
        return int(stake)
    return reward_per_task_wei * FALLBACK_REWARD_MULTIPLE


def queue_due_slashes(conn: Connection, now_ms: int) -> int:
    """Queue executeSlash for every proposal whose delay is over (idempotent); returns how many."""
    sl = s.slashes
    rows = conn.execute(
        select(sl.c.task_id, sl.c.attempt, sl.c.node).where((sl.c.state == "proposed") & (sl.c.executable_ms <= now_ms))
    ).all()
    queued = 0
    for r in rows:
        payload = {
            "proposal_id": evidence_key(r.task_id, int(r.attempt)).hex(),
            "node": r.node,
            "receipt": {"task_id": r.task_id, "attempt": int(r.attempt)},
        }
        queued += ob.enqueue(conn, f"{EXECUTE}:{r.task_id}:{r.attempt}", EXECUTE, payload, now_ms)
    return queued


class SlashListener:
    """Records the outcome of slash proposals and executions (called by the ledger's listener)."""

    def __init__(self, chain: ChainClient | None = None) -> None:
        self.chain = chain  # to read amounts and delays from events; None: not recorded

    def on_confirmed(self, conn: Connection, item: ob.OutboxItem, now_ms: int) -> None:
        p, r = item.payload, item.payload["receipt"]
        if item.action == EXECUTE:
            _update(conn, item, now_ms, state="confirmed", error="")
            row = conn.execute(
                select(s.slashes).where(
                    (s.slashes.c.task_id == r["task_id"]) & (s.slashes.c.attempt == int(r["attempt"]))
                )
            ).first()
            if row is not None:
                wei = int(row.taken_wei if row.taken_wei is not None else row.amount_wei)
                message = (
                    f"slashed {wei} wei for task {r['task_id'][:12]} attempt {r['attempt']}, paid to the submitter"
                )
                append_event(conn, row.job_id, "slashed", now_ms, node=p["node"], message=message)
            log.warning("slash of %s executed (tx %s)", p["node"], item.tx_hash)
            return
        taken, executable_s = self._proposed(item)
        delay_ms = (self.chain.deployment.slash_delay if self.chain is not None else 0) * 1000
        executable_ms = executable_s * 1000 if executable_s is not None else now_ms + delay_ms
        _update(conn, item, now_ms, state="proposed", tx_hash=item.tx_hash, taken_wei=taken,
                executable_ms=executable_ms, error="")  # fmt: skip
        log.warning("slash of %s proposed (tx %s): %s wei, executable at %s ms", p["node"], item.tx_hash, taken,
                    executable_ms)  # fmt: skip

    def on_failed(self, conn: Connection, item: ob.OutboxItem, error: ContractReverted, now_ms: int) -> bool:
        reason = _reason(error)
        if item.action == EXECUTE:
            if error.error == _NOT_YET:  # chain time lags ours: free the key, the timer queues it again later
                ob.supersede(conn, item.id, "failed", now_ms)
                _update(conn, item, now_ms, executable_ms=now_ms + RETRY_EARLY_MS)
                return True
            state = int(error.error_args[1]) if error.error == "NotPending" and len(error.error_args) > 1 else 0
            if state == 3:  # someone else executed it first (anyone may): it is done all the same
                _update(conn, item, now_ms, state="confirmed", error="")
                return True
            vetoed = state == 2
            _update(conn, item, now_ms, state="vetoed" if vetoed else "failed", error=reason[:2000])
            log.error("slash execution %s: %s", item.key, "vetoed by the guardian" if vetoed else reason)
            return True
        _update(conn, item, now_ms, state="failed", tx_hash=item.tx_hash, error=reason[:2000])
        log.error("slash of %s for %s failed: %s", item.payload["node"], item.key, reason)
        return True  # final: a revert will not succeed on a retry, and must not halt the queue

    def _proposed(self, item: ob.OutboxItem) -> tuple[int | None, int | None]:
        """(wei taken, executable at in chain seconds) from the SlashProposed event; None if unread."""
        if self.chain is None or item.tx_hash is None:
            return None, None
        try:
            events = self.chain.slash_proposed_in(item.tx_hash)
        except Exception as exc:  # for the record only: never fail the confirmation
            log.warning("could not read the SlashProposed event of %s: %s", item.tx_hash, exc)
            return None, None
        attempt = int(item.payload["receipt"]["attempt"])
        want = evidence_key(item.payload["receipt"]["task_id"], attempt).hex()
        return next(((amount, at) for pid, _, _, amount, at in events if pid == want), (None, None))


def _reason(error: ContractReverted) -> str:
    """ "EvidenceAlreadyUsed(0xab…, 1)" for a named custom error, else the revert's message."""
    if not error.error:
        return str(error)
    return f"{error.error}({', '.join(_arg(a) for a in error.error_args)})"


def _arg(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, str) and len(value) == 42 and value.startswith("0x"):
        return normalize_address(value)  # eth_abi decodes addresses in lower case
    return str(value)


def _update(conn: Connection, item: ob.OutboxItem, now_ms: int, **values: Any) -> None:
    r = item.payload["receipt"]
    sl = s.slashes
    conn.execute(
        update(sl)
        .where((sl.c.task_id == r["task_id"]) & (sl.c.attempt == int(r["attempt"])))
        .values(updated_ms=now_ms, **values)
    )


def slashed_by_node(conn: Connection, nodes: list[str] | None = None) -> dict[str, int]:
    """Wei taken from each node by confirmed slashes (the amount asked where the event was not read)."""
    sl = s.slashes
    q = select(sl.c.node, sl.c.amount_wei, sl.c.taken_wei).where(sl.c.state == "confirmed")
    if nodes is not None:
        q = q.where(sl.c.node.in_([normalize_address(n) for n in nodes]))
    out: dict[str, int] = defaultdict(int)
    for r in conn.execute(q):  # summed here: SQLite stores wei as text
        out[r.node] += int(r.taken_wei if r.taken_wei is not None else r.amount_wei)
    return dict(out)


def job_slashes(conn: Connection, job_id: str) -> tuple[int, int]:
    """(confirmed slashes, wei taken) for the nodes caught on `job_id`."""
    sl = s.slashes
    rows = conn.execute(
        select(sl.c.amount_wei, sl.c.taken_wei).where((sl.c.job_id == job_id) & (sl.c.state == "confirmed"))
    ).all()
    return len(rows), sum(int(r.taken_wei if r.taken_wei is not None else r.amount_wei) for r in rows)


def slashes(conn: Connection, *, node: str | None = None, job_id: str | None = None) -> list[dict[str, Any]]:
    """Slash records (for status pages and tests), oldest first."""
    sl = s.slashes
    q = select(sl).order_by(sl.c.created_ms, sl.c.task_id, sl.c.attempt)
    if node is not None:
        q = q.where(sl.c.node == normalize_address(node))
    if job_id is not None:
        q = q.where(sl.c.job_id == job_id)
    return [dict(r._mapping) for r in conn.execute(q)]
