"""Who may read what: submitter sessions, blob ownership and per-submitter upload counters."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table

from coordinator.db.metadata import metadata

# A submitter's session (a node's live in core.sessions, tied to its node row).
submitter_sessions = Table(
    "submitter_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("address", String(42), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_submitter_sessions_address", "address", "expires_ms"),
)

# A submitter's read-only dashboard session (scope "dashboard"): the same columns, in a table of
# its own so the gRPC services, which read submitter_sessions only, can never take one, and so
# its shorter lifetime keeps "an address's oldest session expires first" true in each table.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("address", String(42), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_dashboard_sessions_address", "address", "expires_ms"),
)

# One row per (blob, submitter that uploaded it): a content-addressed blob may have several
# owners, and each counts its size against its own storage quota.
blob_owners = Table(
    "blob_owners",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("owner", String(42), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_blob_owners_owner", "owner"),
)

# Bytes a submitter actually sent, per UTC day (day = ms // 86_400_000).
upload_days = Table(
    "upload_days",
    metadata,
    Column("owner", String(42), primary_key=True),
    Column("day", BigInteger, primary_key=True),
    Column("bytes", BigInteger, nullable=False),
)
