"""gRPC settings shared by every TensorGrid process."""

from __future__ import annotations

from collections.abc import Sequence

SESSION_METADATA_KEY = "x-tensorgrid-session"
# Blobs travel in 1 MiB chunks; control messages are small. 8 MiB leaves headroom for
# a chunk plus framing and keeps a hostile sender from making us buffer much more.
MAX_MESSAGE_BYTES = 8 << 20
# A result output up to this size travels in one unary SubmitSmallResult: a client stream costs
# both ends more CPU than a unary call, and most no-op and small inference outputs fit.
SMALL_RESULT_BYTES = 64 * 1024


def channel_options() -> Sequence[tuple[str, int]]:
    """Options for every channel and server: message limits and keepalive for NAT."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options() -> Sequence[tuple[str, int]]:
    return [
        *channel_options(),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]
