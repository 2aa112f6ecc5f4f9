"""Real-time serving, the parts the coordinator, the node and the SDK share (docs/SERVING.md).

receipts: what a replica signs per micro-batch (the batch digests and the receipt's task id) ·
tensors: a request's or an answer's tensors as safetensors bytes, checked like any stranger's file.
"""

from tensorgrid.serving.receipts import (
    batch_digest,
    batch_receipt,
    batch_task_id,
    digest_receipt,
    request_ids_digest,
)
from tensorgrid.serving.tensors import (
    arrays_from_bytes,
    arrays_to_bytes,
    check_tensor_bytes,
    tensors_from_bytes,
    tensors_to_bytes,
)

__all__ = [
    "arrays_from_bytes",
    "arrays_to_bytes",
    "batch_digest",
    "batch_receipt",
    "batch_task_id",
    "check_tensor_bytes",
    "digest_receipt",
    "request_ids_digest",
    "tensors_from_bytes",
    "tensors_to_bytes",
]
