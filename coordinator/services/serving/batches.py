"""A replica's batch receipt, checked against what the coordinator itself sent and received.

A batch is paid only when (1) every request id it names was answered by this replica in this
micro-batch, (2) the receipt's digests equal the ones recomputed from the bytes the
coordinator sent (inputs) and received (outputs), in the receipt's order, and (3) the receipt
is signed by the replica's node under the coordinator's domain. Anything else is a mismatch:
the batch is not paid, and its requests can never be claimed again.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from coordinator.services.serving.hooks import ServedBatch, ServedRequest
from coordinator.services.serving.model import Replica
from tensorgrid import serde
from tensorgrid.crypto import normalize_address, recover_receipt_signer
from tensorgrid.errors import SignatureError
from tensorgrid.serving import batch_receipt
from tensorgrid.types import Domain
from tensorgrid.v1 import serving_pb2

MAX_BATCH_IDS = 4096  # a receipt naming more requests than this is refused unread
_COUNTED = b"tensorgrid serving counted v1"  # separates this key from the secret's other uses
_FIELDS = ("job_id", "task_id", "attempt", "input_hash", "output_hash", "commitment")


class BatchMismatch(Exception):
    """The receipt does not match what the replica was sent and answered (not paid)."""


def settle_batch(domain: Domain, replica: Replica, msg: serving_pb2.BatchReceipt) -> ServedBatch:
    """The checked batch of a receipt; its requests leave `replica.answered` either way.
    Raises BatchMismatch."""
    ids = list(msg.request_ids)
    if not ids or len(ids) > MAX_BATCH_IDS or len(set(ids)) != len(ids):
        raise BatchMismatch(f"a receipt must name 1 to {MAX_BATCH_IDS} distinct requests, this one {len(ids)}")
    entries = [replica.answered.pop(i, None) for i in ids]
    missing = [i for i, a in zip(ids, entries, strict=True) if a is None or a.batch != msg.batch]
    if missing:
        raise BatchMismatch(
            f"requests {missing[:5]} were not answered by replica {replica.replica_id[:12]} in batch {msg.batch}"
        )
    answered = [a for a in entries if a is not None]
    expected = batch_receipt(
        replica.endpoint.job_id,
        replica.replica_id,
        msg.batch,
        ids,
        [a.input for a in answered],
        [a.output for a in answered],
    )
    try:
        got = serde.receipt_from_pb(msg.receipt)
    except Exception as e:  # noqa: BLE001 - a malformed receipt from a stranger
        raise BatchMismatch(f"malformed receipt: {e}") from None
    wrong = [f for f in _FIELDS if getattr(got, f) != getattr(expected, f)]
    if wrong:
        raise BatchMismatch(f"the receipt's {', '.join(wrong)} do not match what was sent and answered")
    try:  # tensorgrid.crypto.verify_receipt, the node's address normalized once, not per receipt
        signer = recover_receipt_signer(domain, got)
        expected_signer = _checksummed(replica.node)
    except (SignatureError, ValueError) as e:
        raise BatchMismatch(f"bad receipt signature: {e}") from None
    if signer != expected_signer:
        raise BatchMismatch(f"bad receipt signature: signed by {signer}, expected {expected_signer}")
    requests = tuple(  # a late answer (its caller gone) is signed for, but neither paid nor checked
        ServedRequest(request_id=i, input=a.input, output=a.output if a.ok else b"", ok=a.ok, seed=a.seed)
        for i, a in zip(ids, answered, strict=True)
    )
    return ServedBatch(
        endpoint_id=replica.endpoint.job_id,
        replica_id=replica.replica_id,
        node=replica.node,
        device_kind=replica.link.device_kind,
        batch=msg.batch,
        receipt=got,
        requests=requests,
    )


@lru_cache(maxsize=4096)
def _checksummed(address: str) -> str:
    """normalize_address, remembered: a node's receipts come many a second (15 µs each)."""
    return normalize_address(address)


def counted_key(secret: bytes) -> bytes:
    """The key of BatchCounted tags, from the coordinator's verification secret (in its database:
    every replica derives the same key; no node ever sees it)."""
    return hmac.new(secret, _COUNTED, hashlib.sha256).digest()


def _tag(key: bytes, node: str, endpoint_id: str, task_id: str, answered: int) -> bytes:
    message = f"{node.lower()}|{endpoint_id}|{task_id}|{answered}".encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def counted(key: bytes, batch: ServedBatch) -> serving_pb2.BatchCounted:
    """What the node is told of a batch this replica verified and counted: to hand to the next
    replica if this one dies before writing it (coordinator/services/serving/service.py)."""
    task_id = batch.receipt.task_id
    tag = _tag(key, batch.node, batch.endpoint_id, task_id, batch.answered)
    return serving_pb2.BatchCounted(endpoint_id=batch.endpoint_id, task_id=task_id, answered=batch.answered, tag=tag)


def counted_by_us(key: bytes, node: str, msg: serving_pb2.BatchCounted) -> bool:
    """Whether a replica of this coordinator counted this batch of `node` (its tag is ours)."""
    want = _tag(key, node, msg.endpoint_id, msg.task_id, msg.answered)
    return bool(key) and hmac.compare_digest(want, bytes(msg.tag))
