"""Checks that work was paid exactly once: the credits in the coordinator's ledger, each escrow's
charge and refund on chain, and the nodes' claims (the replica tests, on loopback and across hosts;
the chaos and settlement tests)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from coordinator.db import schema as s
from coordinator.db.engine import make_engine
from tensorgrid.chain.anvil import Anvil
from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.chain.deploy import Deployment
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tests.integration.conftest import wait_for


def credits(db_url: str, job_id: str | None = None) -> tuple[dict[str, int], int]:
    """How often each task (or check) was credited, and the wei credited in all: of one job, or of all."""
    engine = make_engine(db_url, prepare=False)
    try:
        with engine.connect() as conn:
            c = s.credits
            query = select(c.c.task_id, func.count(), func.sum(c.c.amount_wei)).where(~c.c.void)
            if job_id is not None:
                query = query.where(c.c.job_id == job_id)
            rows = conn.execute(query.group_by(c.c.task_id)).all()
    finally:
        engine.dispose()
    return {r[0]: int(r[1]) for r in rows}, sum(int(r[2]) for r in rows)


def earned(client: Client, node_keys: Sequence[str]) -> list[int]:
    """What each node has earned so far (credited, posted on chain or not)."""
    return [client.earnings(Signer.from_hex(key).address).cumulative_wei for key in node_keys]


def posted(client: Client, node_keys: Sequence[str]) -> None:
    """Wait until every wei these nodes earned is in a root confirmed on chain (none pending): a
    claim made once the chain's clock is past that root's challenge window covers all of it."""
    for address in [Signer.from_hex(key).address for key in node_keys]:
        wait_for(lambda a=address: client.earnings(a).pending_wei == 0, 180, "the nodes' earnings on chain")


def settled_once(
    anvil: Anvil,
    deployment: Deployment,
    node_keys: Sequence[str],
    client: Client,
    job_ids: Sequence[str],
    earned_before: Sequence[int] = (),
    endpoints: Sequence[str] = (),
) -> int:
    """Each job's escrow closed (charged, the rest refunded), then the nodes claim what they
    earned: what they earned since `earned_before` (earned() before these jobs; default:
    nothing) is every wei these escrows charged, none twice; the contract owes nothing once they
    claimed (every other job on this chain must be closed). `endpoints`: deleted endpoints whose
    escrows close cancelled (what they served charged). Returns the wei the escrows charged."""
    assert client.chain is not None
    charged = 0
    closing = [(j, JobStatus.COMPLETED) for j in job_ids] + [(j, JobStatus.CANCELLED) for j in endpoints]
    for job_id, closed in closing:
        escrow = wait_for(
            lambda j=job_id, c=closed: (e := client.escrow(j)).status == c and e, 180, "the escrow's close"
        )
        charged += escrow.charged
    # all posted on chain: nothing pending, and a claim to make unless the node earned nothing
    earnings = [
        wait_for(
            lambda a=address: (
                (e := client.earnings(a)).pending_wei == 0 and (e.claim_epoch or not e.cumulative_wei) and e
            ),
            180,
            "the nodes' earnings on chain",
        )
        for address in [Signer.from_hex(key).address for key in node_keys]
    ]
    anvil.advance_time(deployment.challenge_window + 1)  # past the roots' challenge window, for all nodes
    paid = 0
    for key, now, before in zip(node_keys, earnings, earned_before or [0] * len(node_keys), strict=True):
        node_chain = ChainClient.connect(anvil.rpc_url, deployment, key)
        if now.claim_cumulative_wei:
            node_chain.claim(now.claim_cumulative_wei, now.claim_proof)
        assert node_chain.claimed(node_chain.address) == now.cumulative_wei
        paid += now.cumulative_wei - before
    assert paid == charged  # every charged wei reached a node, none twice
    assert client.chain.owed() == 0
    return charged
