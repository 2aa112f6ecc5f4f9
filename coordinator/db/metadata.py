"""The one MetaData every table is defined on, the schema version and the `meta` settings table."""

from __future__ import annotations

from sqlalchemy import Column, MetaData, String, Table, Text

SCHEMA_VERSION = 1
metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
