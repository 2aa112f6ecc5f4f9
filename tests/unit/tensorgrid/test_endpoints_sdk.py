"""The endpoint SDK's own logic: retries after the coordinator's hint, prompts, status round trip."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from tensorgrid import serde
from tensorgrid.endpoints import prompt_bytes, retry_delay
from tensorgrid.errors import TensorGridError
from tensorgrid.serving import tensors_from_bytes
from tensorgrid.session import CoordinatorError
from tensorgrid.types import EndpointStatus, ReplicaStatus
from tensorgrid.workloads.generation import check_prompts


def test_a_full_endpoint_is_retried_after_the_coordinators_hint() -> None:
    far = time.monotonic() + 60
    busy = CoordinatorError(grpc.StatusCode.RESOURCE_EXHAUSTED, "every replica is full", retry_after_ms=40)
    assert retry_delay(busy, 1, far) == pytest.approx(0.04)
    assert retry_delay(busy, 3, far) == pytest.approx(0.08)  # grows with each refusal
    warming = CoordinatorError(grpc.StatusCode.UNAVAILABLE, "no replica ready")
    assert 0 < retry_delay(warming, 1, far) <= 0.05  # type: ignore[operator]


def test_other_refusals_and_spent_deadlines_are_not_retried() -> None:
    far = time.monotonic() + 60
    assert retry_delay(CoordinatorError(grpc.StatusCode.PERMISSION_DENIED, "not yours"), 1, far) is None
    assert retry_delay(CoordinatorError(grpc.StatusCode.INVALID_ARGUMENT, "too big"), 1, far) is None
    busy = CoordinatorError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", retry_after_ms=500)
    assert retry_delay(busy, 1, time.monotonic() + 0.1) is None  # the wait would pass the deadline


def test_a_prompt_is_one_row_of_the_prompt_file_format() -> None:
    tensors = tensors_from_bytes(prompt_bytes([5, 17, 3]))
    assert check_prompts(tensors, vocab_size=32) == 1
    assert tensors["tokens"].tolist() == [[5, 17, 3]] and tensors["lengths"].tolist() == [3]
    assert tensors["tokens"].dtype == torch.int64
    with pytest.raises(TensorGridError, match="at least one token"):
        prompt_bytes([])


def test_endpoint_status_survives_the_wire_with_wei_beyond_64_bits() -> None:
    status = EndpointStatus(
        endpoint_id="ab" * 32,
        state="running",
        serves="inference",
        min_replicas=1,
        max_replicas=3,
        replicas=[
            ReplicaStatus("cd" * 32, "0x" + "11" * 20, "ready", 2, 40),
            ReplicaStatus("ef" * 32, "0x1", "assigned"),
        ],
        requests_per_s=12.5,
        p50_ms=1.25,
        p99_ms=4.0,
        requests=40,
        errors=1,
        checked=2,
        caught=0,
        spent_wei=2**70,
        price_wei=10**18,
        max_requests=1000,
        created_ms=1,
        queued=3,
    )
    back = serde.endpoint_from_pb(serde.endpoint_to_pb(status))
    assert back == status and back.ready == 1
