"""64-hex digests: sha256 blob hashes, job and task ids, every bytes32 that travels as text.

One form only: exactly 64 lowercase hex digits, no 0x. Checked wherever such a value
arrives from outside, because it becomes a path (blob stores), a signed field (receipts,
auth messages) or a database key.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from tensorgrid.errors import TensorGridError

_HEX32_RE = re.compile(r"[0-9a-f]{64}")


def is_hex32(value: object) -> TypeGuard[str]:
    """True if value is exactly 64 lowercase hex digits (a sha256 or bytes32, without 0x)."""
    return isinstance(value, str) and _HEX32_RE.fullmatch(value) is not None


def check_hex32(value: object, what: str, error: type[TensorGridError] = TensorGridError) -> str:
    """value if it is 64 lowercase hex digits, else `error` naming `what` and the value."""
    if not is_hex32(value):
        raise error(f"{what} must be exactly 64 lowercase hex digits without 0x, got {value!r}")
    return value
