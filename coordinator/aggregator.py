"""Aggregation: turn a job's accepted task outputs into its one result blob.

Training jobs aggregate round by round instead (coordinator.training: the round manager
averages pseudo-gradients and takes the outer step); their result is the final weights.
"""

from __future__ import annotations

import json
import os

from coordinator.training import schema as _training_schema  # noqa: F401  (its table, before create_all)
from tensorgrid.blobs import BlobStore
from tensorgrid.types import BlobRef
from tensorgrid.workloads import tensorfile


def assemble(kind: str, outputs: list[BlobRef], blobs: BlobStore) -> BlobRef:
    """Inference: concatenate output shards in task order, streaming. Noop: a manifest of outputs."""
    if kind == "inference":
        tmp = blobs.temp_path("result-")
        try:
            tensorfile.concat([blobs.path_for(o.sha256) for o in outputs], tmp)
            return blobs.put_file(tmp)
        finally:
            os.unlink(tmp)
    manifest = json.dumps([o.sha256 for o in outputs]).encode()
    return blobs.put_bytes(manifest)
