"""Which job (or endpoint) a command-line argument names, and what to say when the key cannot see it."""

from __future__ import annotations

import argparse
from typing import Any

from tensorgrid.errors import TensorGridError


def job_id_of(client: Any, text: str) -> str:
    """A whole job id from an id or its first 8+ hex characters (`job list` prints 12 and ".."),
    among this key's 1,000 most recent jobs; TensorGridError if none or several match."""
    prefix = text.strip().rstrip(".").lower()
    if len(prefix) == 64:
        return prefix
    if len(prefix) < 8 or any(ch not in "0123456789abcdef" for ch in prefix):
        raise TensorGridError(f"{text!r} is not a job id: give its 64 hex characters or the first 8 or more")
    matches = [j.job_id for j in client.jobs("", 1000) if j.job_id.startswith(prefix)]
    if not matches:
        raise TensorGridError(f"no job of {client.signer.address} starts with {prefix} (among its 1,000 most recent)")
    if len(matches) > 1:
        raise TensorGridError(f"{prefix} is the start of {len(matches)} jobs: give more of its id")
    return matches[0]


def not_yours(ns: argparse.Namespace, client: Any, job_id: str, e: Exception) -> Exception:
    """A job the coordinator does not show this key reads as 'not found': say whose key asked."""
    if getattr(getattr(e, "code", None), "name", "") != "NOT_FOUND":
        return e
    return TensorGridError(
        f"job {job_id} is not among the jobs of {client.signer.address} (key {ns.key}): a job is visible "
        f"only to the key that submitted it (pass that key with --key or $TENSORGRID_KEY), or there is no such job"
    )
