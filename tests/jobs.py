"""A job row as the repository tests store it: every field has a default a test may override."""

from __future__ import annotations

from typing import Any

from coordinator.repositories.jobs import NewJob

SUBMITTER = "0x" + "11" * 20


def new_job(job_id: str, **fields: Any) -> NewJob:
    """A no-op job of `job_id` (no model, any device, 1 GiB, 5 s, 3 attempts, free, no policy),
    with `fields` in place of those defaults."""
    defaults: dict[str, Any] = {
        "submitter": SUBMITTER,
        "kind": "noop",
        "spec_json": b"{}",
        "spec_hash": "cd" * 32,
        "device": "any",
        "min_memory_bytes": 0,
        "model": None,
        "settings_json": "{}",
        "memory_limit_bytes": 1 << 30,
        "time_limit_ms": 5000,
        "max_attempts": 3,
    }
    return NewJob(job_id=job_id, **(defaults | fields))
