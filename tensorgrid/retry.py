"""Exponential backoff: the one formula every retry loop in TensorGrid waits by."""

from __future__ import annotations

# 2.0**1000 is still a finite float; beyond it only the cap matters.
_MAX_DOUBLINGS = 1000


def backoff(failures: int, base: float, cap: float = float("inf")) -> float:
    """How long to wait after `failures` consecutive failures: 0 for none, then base, 2·base,
    4·base … never more than cap. Units are the caller's (seconds or milliseconds)."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, _MAX_DOUBLINGS))
