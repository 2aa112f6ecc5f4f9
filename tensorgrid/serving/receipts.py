"""What a replica signs after each micro-batch: one EIP-712 Receipt, the same type as a task's.

The receipt binds the node to the exact inputs it was given and the outputs it returned for
every request of the batch, in order, so a sampled request proven wrong is evidence against
the node that signed it (the same evidence a batch task's receipt is):

    job_id      = the endpoint's job id
    task_id     = keccak(replica_id ‖ batch as 8 bytes, big-endian)
    attempt     = 0
    input_hash  = batch_digest(inputs)
    output_hash = batch_digest(outputs)
    commitment  = request_ids_digest(request ids)

Both sides compute these from the bytes they sent and received; nothing else is trusted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from eth_utils import keccak

from tensorgrid.digests import check_hex32
from tensorgrid.types import Receipt

_EMPTY = hashlib.sha256(b"").hexdigest()


def batch_digest(items: Sequence[bytes]) -> str:
    """sha256 over the items' own sha256 digests, in order (64 hex chars)."""
    h = hashlib.sha256()
    for item in items:
        h.update(hashlib.sha256(item).digest())
    return h.hexdigest()


def request_ids_digest(request_ids: Sequence[int]) -> str:
    """sha256 over the request ids as 8-byte big-endian words, in order."""
    return hashlib.sha256(b"".join(i.to_bytes(8, "big") for i in request_ids)).hexdigest()


def batch_task_id(replica_id: str, batch: int) -> str:
    """The receipt task id of micro-batch `batch` of a replica (64 hex chars)."""
    check_hex32(replica_id, "replica id")
    return keccak(bytes.fromhex(replica_id) + batch.to_bytes(8, "big")).hex()


def batch_receipt(
    endpoint_id: str,
    replica_id: str,
    batch: int,
    request_ids: Sequence[int],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
) -> Receipt:
    """The unsigned receipt of one micro-batch (sign it with tensorgrid.crypto.sign_receipt)."""
    if not len(request_ids) == len(inputs) == len(outputs):
        raise ValueError("a batch receipt needs one input and one output per request")
    return digest_receipt(endpoint_id, replica_id, batch, request_ids, batch_digest(inputs), batch_digest(outputs))


def digest_receipt(
    endpoint_id: str, replica_id: str, batch: int, request_ids: Sequence[int], input_hash: str, output_hash: str
) -> Receipt:
    """batch_receipt from the batch's digests (a worker on the data link reports them)."""
    return Receipt(
        job_id=endpoint_id,
        task_id=batch_task_id(replica_id, batch),
        attempt=0,
        input_hash=input_hash,
        output_hash=output_hash,
        commitment=request_ids_digest(request_ids),
    )
