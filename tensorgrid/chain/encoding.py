"""bytes32 values and slash evidence keys, as the contracts encode them.

A leaf module (eth_hash only): the coordinator's ledger uses these on every slash without
loading web3, which only a chain-settled coordinator needs.
"""

from __future__ import annotations

from eth_hash.auto import keccak

from tensorgrid.chain.errors import ChainError

Bytes32 = str | bytes


def to_bytes32(value: Bytes32) -> bytes:
    """32 raw bytes from 64 hex digits (0x optional) or bytes; ChainError otherwise."""
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    else:
        try:
            raw = bytes.fromhex(value.removeprefix("0x"))
        except (AttributeError, ValueError):
            raise ChainError(f"expected 64 hex digits for a bytes32, got {value!r}") from None
    if len(raw) != 32:
        raise ChainError(f"expected 32 bytes, got {len(raw)}: {value!r}")
    return raw


def evidence_key(task_id: Bytes32, attempt: int) -> bytes:
    """keccak256(abi.encode(taskId, attempt)): a slash's unit of evidence and its proposal id."""
    return bytes(keccak(to_bytes32(task_id) + attempt.to_bytes(32, "big")))
