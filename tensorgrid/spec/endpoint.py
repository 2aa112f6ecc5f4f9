"""endpoint: a model served on warm replicas for real-time requests (docs/SERVING.md).

An endpoint is a job that never finishes by itself: it runs until its submitter deletes it
(or its budget is spent). Each request is a small safetensors file of rows (`serves`:
"inference") or one prompt (`serves`: "generation", decoded with the settings below and the
request's own seed). Each request answered and receipted earns the replica's node
`reward_per_task_wei` (the price per request), up to `max_requests` of them: the escrow holds
reward_per_task_wei × max_requests. A free endpoint (no reward) may set max_requests 0: no cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tensorgrid.errors import SpecError
from tensorgrid.spec.base import GiB, JobSpecBase
from tensorgrid.spec.checks import Decoder, as_float, blob_ref, check_number
from tensorgrid.spec.generation import MAX_VOCAB, check_decoding, stop_tokens_of
from tensorgrid.spec.inference import input_names_of
from tensorgrid.types import BlobRef

SERVES = ("inference", "generation")
MAX_REPLICAS = 64
MAX_REQUEST_BYTES = 4 << 20  # within one gRPC message (tensorgrid.rpc.MAX_MESSAGE_BYTES)


@dataclass(frozen=True, kw_only=True)
class EndpointSpec(JobSpecBase):
    """Serve `model` on between min_replicas and max_replicas warm nodes.

    Replicas batch the requests they hold: whatever queued while the worker was busy, up to
    max_batch, runs as soon as it is free. max_delay_us > 0 also waits that long for more while
    requests keep arriving (fuller batches, as a GPU may want; on a CPU it only adds latency).
    A replica holds at most max_queue requests; when every replica is full a call is refused
    with RESOURCE_EXHAUSTED and a retry hint. check_rate of the requests are run again on
    another replica or the coordinator's referee, with the consequences of a batch check.
    task_memory_limit_bytes and task_time_limit_s bound one micro-batch.
    """

    model: BlobRef
    serves: str = "inference"
    input_names: tuple[str, ...] = ()
    min_replicas: int = 1
    max_replicas: int = 1
    max_batch: int = 16
    max_delay_us: int = 0
    max_queue: int = 64
    request_timeout_ms: int = 10_000
    max_request_bytes: int = 1 << 20
    max_requests: int = 0
    check_rate: float = 0.02
    # generation endpoints: the decoding settings (each request brings its seed)
    vocab_size: int = 0
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    task_memory_limit_bytes: int = 2 * GiB
    task_time_limit_s: int = 60
    kind: str = "endpoint"

    DECODERS: ClassVar[Mapping[str, Decoder]] = {
        "model": blob_ref,
        "input_names": input_names_of,
        "check_rate": as_float,
        "temperature": as_float,
        "top_p": as_float,
        "stop_tokens": stop_tokens_of,
    }
    INT_RANGES: ClassVar[Mapping[str, tuple[int, int]]] = {
        "min_replicas": (1, MAX_REPLICAS),
        "max_replicas": (1, MAX_REPLICAS),
        "max_batch": (1, 1024),
        "max_delay_us": (0, 1_000_000),
        "max_queue": (1, 100_000),
        "request_timeout_ms": (10, 600_000),
        "max_request_bytes": (1, MAX_REQUEST_BYTES),
        "max_requests": (0, 2**63 - 1),
        "vocab_size": (0, MAX_VOCAB),
        "max_new_tokens": (1, 100_000),
        "top_k": (0, MAX_VOCAB),
    }

    def validate(self) -> None:
        super().validate()
        if self.serves not in SERVES:
            raise SpecError(f"serves must be one of {SERVES}, got {self.serves!r}")
        if self.min_replicas > self.max_replicas:
            raise SpecError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        if len(set(self.input_names)) != len(self.input_names):
            raise SpecError("input_names has duplicates")
        check_number("check_rate", self.check_rate, 0.0, 1.0, ints=True)
        if self.reward_per_task_wei > 0 and self.max_requests == 0:
            raise SpecError("a paid endpoint needs max_requests (the escrow holds reward_per_task_wei × max_requests)")
        if self.serves == "generation":
            self._validate_decoding()
        elif self.vocab_size:
            raise SpecError("vocab_size and the decoding settings apply to serves 'generation'")

    def _validate_decoding(self) -> None:
        if self.vocab_size < 1:
            raise SpecError("a generation endpoint needs vocab_size (the decoder's logits width)")
        check_decoding(self.vocab_size, self.temperature, self.top_k, self.top_p, self.stop_tokens)

    def decode_settings(self, seed: int = 0) -> dict[str, Any]:
        """tensorgrid.workloads.generation.DecodeSettings of one request (its seed)."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "vocab_size": self.vocab_size,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": seed,
            "stop_tokens": list(self.stop_tokens),
            "batch_size": 0,
        }

    def replica_settings(self) -> dict[str, Any]:
        """What a replica is told in ReplicaAssign.settings_json."""
        settings: dict[str, Any] = {"input_names": list(self.input_names)}
        if self.serves == "generation":
            settings["generation"] = self.decode_settings()
        return settings
