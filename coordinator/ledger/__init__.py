"""The coordinator's ledger and chain outbox: credits, epochs of earnings roots, proofs,
slashes of caught nodes, and every chain write sent exactly once, in order, across restarts."""

from coordinator.ledger.credits import AcceptedResult, credit_results, set_job_price, void_job
from coordinator.ledger.epochs import LedgerListener, mark_revoked, post_epoch, resolve_failed_epoch
from coordinator.ledger.ledger import Claimable, Earnings, Ledger, earnings, job_finished, status
from coordinator.ledger.outbox import Outbox, OutboxItem, OutboxListener, enqueue
from coordinator.ledger.slashing import SlashListener, queue_slash

__all__ = [
    "AcceptedResult",
    "Claimable",
    "Earnings",
    "Ledger",
    "LedgerListener",
    "Outbox",
    "OutboxItem",
    "OutboxListener",
    "SlashListener",
    "credit_results",
    "earnings",
    "enqueue",
    "job_finished",
    "mark_revoked",
    "post_epoch",
    "queue_slash",
    "resolve_failed_epoch",
    "set_job_price",
    "status",
    "void_job",
]
