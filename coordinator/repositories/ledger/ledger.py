"""The coordinator's ledger: credits → epochs → on-chain roots and charges → proofs for claims.

Order of a priced job's life:
  1. set_job_price(…) when the job is created (its escrow is on chain);
  2. credit_results(…) inside each result-acceptance transaction (services.acceptance);
  3. post_epoch(…) on a timer: one root and all pending charges per epoch;
  4. job_finished(…) when its result is known: charges the job's last credits in an epoch
     first, then queues record_result, which the outbox sends strictly after that post_root.
Nodes ask earnings(node) for their proof against the newest confirmed root.
"""

from __future__ import annotations

from typing import Any, TypedDict

from sqlalchemy import Connection, func, select

from coordinator.db import schema as s
from coordinator.repositories.ledger import claim_pay, epochs
from coordinator.repositories.ledger import outbox as ob
from tensorgrid.chain.merkle import EarningsTree
from tensorgrid.crypto import normalize_address


class Claimable(TypedDict):
    epoch: int
    cumulative_wei: int
    proof: list[str]  # 0x-hex bytes32 siblings, leaf to root


class EpochRecord(TypedDict):
    epoch: int
    root: str  # 64 hex
    state: str  # posting | confirmed | failed | revoked
    total_wei: int
    created_ms: int
    leaves: list[tuple[str, int]]  # (node, cumulative wei), by address


class Earnings(TypedDict):
    cumulative_wei: int  # every live credit, charged or not
    claimable: Claimable | None  # against the newest epoch confirmed on chain
    pending_wei: int  # cumulative_wei not yet in a confirmed root


def job_finished(conn: Connection, job_id: str, result_hash: str, now_ms: int) -> bool:
    """Queue record_result(job_id, result_hash) behind a post_root charging the job's last credits.

    In the caller's transaction. If the job still has uncharged credits a new epoch is made
    first (with everyone's pending credits); the outbox runs items in enqueue order, so the
    escrow is charged before recordResult closes it. False for a job without a price.
    """
    if conn.execute(select(s.job_prices.c.job_id).where(s.job_prices.c.job_id == job_id)).first() is None:
        return False
    claim_pay.pay(
        conn, job_id, now_ms, final=True
    )  # claimants' wins it had no room for while it ran (ledger.claim_pay)
    if epochs.has_uncharged(conn, job_id):
        epochs.post_epoch(conn, now_ms)  # if epochs are halted, the unwind re-queues us after the re-post
    ob.enqueue(conn, f"record_result:{job_id}", "record_result", {"job_id": job_id, "result_hash": result_hash}, now_ms)
    return True


def earnings(conn: Connection, node: str, trees: dict[str, EarningsTree] | None = None) -> Earnings:
    """What `node` has earned and, if a confirmed root covers it, the proof to claim with."""
    address = normalize_address(node)
    row = conn.execute(select(s.node_earnings).where(s.node_earnings.c.node == address)).first()
    cumulative = int(row.earned_wei) if row is not None else 0
    latest = conn.execute(
        select(s.epochs.c.epoch, s.epochs.c.root)
        .where(s.epochs.c.state == "confirmed")
        .order_by(s.epochs.c.epoch.desc())
        .limit(1)
    ).first()
    claimable: Claimable | None = None
    if latest is not None:
        ee = s.epoch_earnings
        mine = conn.execute(
            select(ee.c.cumulative_wei).where((ee.c.epoch == latest.epoch) & (ee.c.node == address))
        ).first()
        if mine is not None:
            tree = _tree(conn, latest.epoch, latest.root, trees)
            proof = ["0x" + p.hex() for p in tree.proof(address)]
            claimable = Claimable(epoch=int(latest.epoch), cumulative_wei=int(mine.cumulative_wei), proof=proof)
    covered = claimable["cumulative_wei"] if claimable else 0
    return Earnings(cumulative_wei=cumulative, claimable=claimable, pending_wei=max(0, cumulative - covered))


def epoch_record(conn: Connection, epoch: int = 0) -> EpochRecord | None:
    """Epoch `epoch` (0: the latest) with every leaf of its tree, so anyone can recompute its root."""
    e, ee = s.epochs, s.epoch_earnings
    query = select(e).where(e.c.epoch == epoch) if epoch else select(e).order_by(e.c.epoch.desc()).limit(1)
    row = conn.execute(query).first()
    if row is None:
        return None
    leaves = conn.execute(select(ee.c.node, ee.c.cumulative_wei).where(ee.c.epoch == row.epoch).order_by(ee.c.node))
    return EpochRecord(
        epoch=int(row.epoch),
        root=str(row.root),
        state=str(row.state),
        total_wei=int(row.total_wei),
        created_ms=int(row.created_ms),
        leaves=[(str(r.node), int(r.cumulative_wei)) for r in leaves],
    )


def _tree(conn: Connection, epoch: int, root: str, trees: dict[str, EarningsTree] | None) -> EarningsTree:
    if trees is not None and root in trees:
        return trees[root]
    ee = s.epoch_earnings
    tree = EarningsTree({r.node: int(r.cumulative_wei) for r in conn.execute(select(ee).where(ee.c.epoch == epoch))})
    if tree.root.hex() != root:
        raise RuntimeError(f"epoch {epoch}: stored earnings do not rebuild root {root}")
    if trees is not None:
        trees[root] = tree
    return tree


def status(conn: Connection) -> dict[str, Any]:
    """A summary for status pages and the devnet: epochs, a failure if any, outbox counts."""
    e = s.epochs
    last = conn.execute(select(func.max(e.c.epoch))).scalar()
    confirmed = conn.execute(select(func.max(e.c.epoch)).where(e.c.state == "confirmed")).scalar()
    failed = conn.execute(select(e.c.epoch, e.c.error).where(e.c.state == "failed")).first()
    counts = {
        r.state: int(r.n)
        for r in conn.execute(select(s.outbox.c.state, func.count().label("n")).group_by(s.outbox.c.state))
    }
    blocked = conn.execute(
        select(s.outbox.c.key, s.outbox.c.last_error).where((s.outbox.c.state == "failed") & s.outbox.c.blocking)
    ).first()
    return {
        "last_epoch": int(last or 0),
        "confirmed_epoch": int(confirmed or 0),
        "failed_epoch": None if failed is None else {"epoch": int(failed.epoch), "error": failed.error},
        "outbox": counts,
        "blocked_by": None if blocked is None else {"key": blocked.key, "error": blocked.last_error},
    }
