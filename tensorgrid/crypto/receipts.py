"""EIP-712 receipts: the typed data a node signs for each result.

The digest is built by hand (two keccaks over fixed-width fields) rather than through
eth_account.messages.encode_typed_data, which parses the type strings on every call:
the coordinator checks one receipt per task at thousands of tasks per second. The tests
hold this encoder equal to eth-account's, and `receipt_typed_data` gives the full EIP-712
document for wallets, Solidity tests and anyone who wants to check by other means.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

from eth_hash.auto import keccak

from tensorgrid.crypto.keys import Signer, normalize_address, recover_address
from tensorgrid.digests import check_hex32
from tensorgrid.errors import DomainMismatch, SignatureError
from tensorgrid.types import Domain, Receipt

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
RECEIPT_TYPE = (
    "Receipt(bytes32 jobId,bytes32 taskId,uint32 attempt,bytes32 inputHash,bytes32 outputHash,bytes32 commitment)"
)
DOMAIN_TYPEHASH: bytes = keccak(DOMAIN_TYPE.encode("ascii"))
RECEIPT_TYPEHASH: bytes = keccak(RECEIPT_TYPE.encode("ascii"))

RECEIPT_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Receipt": [
        {"name": "jobId", "type": "bytes32"},
        {"name": "taskId", "type": "bytes32"},
        {"name": "attempt", "type": "uint32"},
        {"name": "inputHash", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"},
        {"name": "commitment", "type": "bytes32"},
    ],
}

_UINT32_MAX = 2**32 - 1
_UINT256_MAX = 2**256 - 1
_HASH_FIELDS = ("job_id", "task_id", "input_hash", "output_hash", "commitment")


def _bytes32(field: str, value: str) -> bytes:
    return bytes.fromhex(check_hex32(value, f"receipt {field}", SignatureError))


@lru_cache(maxsize=64)
def domain_separator(domain: Domain) -> bytes:
    """hashStruct(EIP712Domain) for `domain`; cached, since a coordinator uses one domain."""
    if not isinstance(domain.name, str) or not isinstance(domain.version, str):
        raise SignatureError("domain name and version must be strings")
    if not isinstance(domain.chain_id, int) or not 0 <= domain.chain_id <= _UINT256_MAX:
        raise SignatureError(f"domain chain_id must be a uint256, got {domain.chain_id!r}")
    contract = normalize_address(domain.verifying_contract)
    return keccak(
        DOMAIN_TYPEHASH
        + keccak(domain.name.encode("utf-8"))
        + keccak(domain.version.encode("utf-8"))
        + domain.chain_id.to_bytes(32, "big")
        + bytes(12)
        + bytes.fromhex(contract[2:])
    )


def receipt_struct_hash(receipt: Receipt) -> bytes:
    """hashStruct(Receipt): keccak(typeHash || each field as a 32-byte word)."""
    attempt = receipt.attempt
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt <= _UINT32_MAX:
        raise SignatureError(f"receipt attempt must be a uint32, got {attempt!r}")
    return keccak(
        RECEIPT_TYPEHASH
        + _bytes32("job_id", receipt.job_id)
        + _bytes32("task_id", receipt.task_id)
        + attempt.to_bytes(32, "big")
        + _bytes32("input_hash", receipt.input_hash)
        + _bytes32("output_hash", receipt.output_hash)
        + _bytes32("commitment", receipt.commitment)
    )


def require_domain(expected: Domain, offered: Domain) -> None:
    """Return if `offered` (what a coordinator sent) is `expected` (a deployments file's domain);
    else DomainMismatch naming each differing field. A node that signed under another domain would
    sign receipts for another chain or contract, where they could be replayed or never count."""
    diffs = []
    for field, want, got in (
        ("name", expected.name, offered.name),
        ("version", expected.version, offered.version),
        ("chainId", expected.chain_id, offered.chain_id),
        (
            "verifyingContract",
            _address_or_raw(expected.verifying_contract),
            _address_or_raw(offered.verifying_contract),
        ),
    ):
        if want != got:
            diffs.append(f"{field} {got!r} (expected {want!r})")
    if diffs:
        raise DomainMismatch(
            "refusing to sign: the coordinator's EIP-712 domain differs from the deployments file's: "
            + ", ".join(diffs)
        )


def _address_or_raw(value: str) -> str:
    try:
        return normalize_address(value)
    except SignatureError:
        return value


def receipt_digest(domain: Domain, receipt: Receipt) -> bytes:
    """The 32 bytes a node signs: keccak(0x1901 || domainSeparator || hashStruct(receipt))."""
    return keccak(b"\x19\x01" + domain_separator(domain) + receipt_struct_hash(receipt))


def sign_receipt(signer: Signer, domain: Domain, receipt: Receipt) -> Receipt:
    """A copy of `receipt` carrying `signer`'s 65-byte signature over its EIP-712 digest."""
    signature = signer.sign_digest(receipt_digest(domain, receipt))
    return dataclasses.replace(receipt, signature=signature)


def recover_receipt_signer(domain: Domain, receipt: Receipt) -> str:
    """The checksum address that signed `receipt`; SignatureError if it is unsigned or invalid."""
    if not receipt.signature:
        raise SignatureError(f"receipt for task {receipt.task_id} is not signed")
    return recover_address(receipt_digest(domain, receipt), receipt.signature)


def verify_receipt(domain: Domain, receipt: Receipt, expected_address: str) -> None:
    """Return if `receipt` was signed by `expected_address` under `domain`; else SignatureError."""
    expected = normalize_address(expected_address)
    actual = recover_receipt_signer(domain, receipt)
    if actual != expected:
        raise SignatureError(
            f"receipt for task {receipt.task_id} attempt {receipt.attempt} signed by {actual}, expected {expected}"
        )


def receipt_typed_data(domain: Domain, receipt: Receipt) -> dict[str, Any]:
    """The full EIP-712 document (types, primaryType, domain, message) for `receipt`.

    bytes32 values are 0x-prefixed hex strings, as wallets and JSON-RPC expect.
    """
    for name in _HASH_FIELDS:
        _bytes32(name, getattr(receipt, name))
    return {
        "types": {name: [dict(member) for member in members] for name, members in RECEIPT_TYPES.items()},
        "primaryType": "Receipt",
        "domain": {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": normalize_address(domain.verifying_contract),
        },
        "message": {
            "jobId": "0x" + receipt.job_id,
            "taskId": "0x" + receipt.task_id,
            "attempt": receipt.attempt,
            "inputHash": "0x" + receipt.input_hash,
            "outputHash": "0x" + receipt.output_hash,
            "commitment": "0x" + receipt.commitment,
        },
    }
