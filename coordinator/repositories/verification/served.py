"""What a sampled check of an endpoint's request records (services/serving/checks.py).

The same consequences as a batch check (checks.settle, rulings.apply): a verified answer
extends the node's streak (trust.bump, on the endpoint's job id); two replicas agreeing is
proof only when both nodes are trusted for the endpoint (`needs_referee`, the batch checks'
rule of confirmation.needs_confirmation), otherwise the referee confirms; a node the referee proved
wrong is caught (its streak reset, its caught and rejection counters up, a "caught" event on
the endpoint) and, when the endpoint is escrowed on chain, a slash is queued with the
batch's signed receipt as evidence (ledger.slashing.queue_slash, beneficiary the submitter).

A served batch has no task row: its receipt (task id = keccak(replica ‖ batch), attempt 0)
is stored in `receipts` only when it becomes evidence, then queue_slash reads it like a
task's (it refuses nothing for a task id the tasks table does not hold).
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, select

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.db.sql import insert_ignore
from coordinator.repositories.ledger.slashing import queue_slash
from coordinator.repositories.verification.trust import bump, streak_for_job
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import Receipt


def record_verified(conn: Connection, nodes: list[str], endpoint_id: str) -> None:
    """Sampled answers agreed with the referee's, or two trusted replicas agreed."""
    bump(conn, nodes, valid=True, job_id=endpoint_id)


def untrusted(conn: Connection, endpoint_id: str, nodes: list[str]) -> list[str]:
    """Those of `nodes` not trusted for the endpoint. Two replicas' agreement needs the
    referee's confirmation unless BOTH nodes are trusted (trust.streak_for_job, with the job's
    trust_after: an endpoint has no policy row, so the default): one operator holding both
    replicas, or a trusted node vouching for a new one, could agree on a wrong answer."""
    raw = conn.execute(select(s.job_policies.c.policy).where(s.job_policies.c.job_id == endpoint_id)).scalar()
    trust_after = int(json.loads(raw).get("trust_after", DEFAULT_TRUST_AFTER)) if raw else DEFAULT_TRUST_AFTER
    if trust_after <= 0:
        return []
    return [node for node in nodes if streak_for_job(conn, node, endpoint_id, trust_after) < trust_after]


DEFAULT_TRUST_AFTER = VerificationSpec().trust_after


def record_caught(
    conn: Connection,
    *,
    node: str,
    endpoint_id: str,
    receipt: Receipt | None,
    correct_output_hash: str,
    reason: str,
    now_ms: int,
) -> bool:
    """A node proven wrong on an endpoint; True when a slash was queued with `receipt`.

    receipt: the batch receipt the node signed over the wrong answer (None: no signed
    evidence, e.g. a checking replica's rerun, so reputation only). correct_output_hash:
    the batch's output digest with the referee's answer in place of the wrong one.
    """
    bump(conn, [node], valid=False, job_id=endpoint_id)
    if conn.execute(select(s.jobs.c.job_id).where(s.jobs.c.job_id == endpoint_id)).first() is not None:
        append_event(conn, endpoint_id, "caught", now_ms, node=node, message=reason[:2000])
    if receipt is None or not receipt.signature:
        return False
    row = dict(
        task_id=receipt.task_id,
        attempt=receipt.attempt,
        node=node,
        input_hash=receipt.input_hash,
        output_hash=receipt.output_hash,
        commitment=receipt.commitment,
        signature=receipt.signature,
        received_ms=now_ms,
    )
    insert_ignore(conn, s.receipts, [row])
    return queue_slash(
        conn,
        node=node,
        job_id=endpoint_id,
        task_id=receipt.task_id,
        attempt=receipt.attempt,
        correct_output_sha=correct_output_hash,
        now_ms=now_ms,
    )


def device_kind(conn: Connection, node: str) -> str:
    """The node's registered device kind ("" if unknown)."""
    value = conn.execute(select(s.nodes.c.device_kind).where(s.nodes.c.address == node)).scalar()
    return str(value or "")
