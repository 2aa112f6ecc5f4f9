from __future__ import annotations

import dataclasses

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from tensorgrid.crypto import (
    RECEIPT_TYPES,
    Signer,
    domain_separator,
    receipt_digest,
    receipt_typed_data,
    recover_receipt_signer,
    require_domain,
    sign_receipt,
    verify_receipt,
)
from tensorgrid.errors import DomainMismatch, SignatureError
from tensorgrid.types import Domain, Receipt

from .conftest import random_receipt

DOMAINS = [
    Domain("TensorGrid", "1", 31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3"),
    Domain("TensorGrid", "2", 1, "0x0000000000000000000000000000000000000001"),
    Domain("Grid ✓ unicode", "1.0.0", 2**64 + 5, "0x" + "ff" * 20),
]


@pytest.mark.parametrize("domain", DOMAINS)
def test_digest_matches_eth_account(domain: Domain) -> None:
    for attempt in (0, 1, 7, 2**32 - 1):
        receipt = random_receipt(attempt)
        reference = _hash_eip191_message(encode_typed_data(full_message=receipt_typed_data(domain, receipt)))
        assert receipt_digest(domain, receipt) == bytes(reference)


def test_default_commitment_digest_matches(domain: Domain) -> None:
    receipt = dataclasses.replace(random_receipt(), commitment="0" * 64)
    reference = _hash_eip191_message(encode_typed_data(full_message=receipt_typed_data(domain, receipt)))
    assert receipt_digest(domain, receipt) == bytes(reference)


def test_signature_matches_eth_account(domain: Domain, signer: Signer) -> None:
    receipt = random_receipt(3)
    signed = sign_receipt(signer, domain, receipt)
    reference = Account.sign_typed_data(signer.private_key, full_message=receipt_typed_data(domain, receipt))
    assert signed.signature == bytes(reference.signature)


def test_sign_returns_copy(domain: Domain, signer: Signer) -> None:
    receipt = random_receipt()
    signed = sign_receipt(signer, domain, receipt)
    assert receipt.signature == b""
    assert dataclasses.replace(signed, signature=b"") == receipt


def test_sign_recover_verify_round_trip(domain: Domain, signer: Signer) -> None:
    signed = sign_receipt(signer, domain, random_receipt(2))
    assert recover_receipt_signer(domain, signed) == signer.address
    verify_receipt(domain, signed, signer.address)
    verify_receipt(domain, signed, signer.address.lower())


@pytest.mark.parametrize(
    "change",
    [
        {"job_id": "ab" * 32},
        {"task_id": "cd" * 32},
        {"attempt": 99},
        {"input_hash": "01" * 32},
        {"output_hash": "02" * 32},
        {"commitment": "03" * 32},
    ],
)
def test_tampered_field_changes_signer(domain: Domain, signer: Signer, change: dict[str, object]) -> None:
    signed = sign_receipt(signer, domain, random_receipt(1))
    tampered = dataclasses.replace(signed, **change)  # type: ignore[arg-type]
    assert recover_receipt_signer(domain, tampered) != signer.address
    with pytest.raises(SignatureError, match="expected"):
        verify_receipt(domain, tampered, signer.address)


def test_other_domain_changes_signer(signer: Signer) -> None:
    signed = sign_receipt(signer, DOMAINS[0], random_receipt())
    other = dataclasses.replace(DOMAINS[0], chain_id=1)
    assert recover_receipt_signer(other, signed) != signer.address


def test_signature_from_other_key_rejected(domain: Domain, signer: Signer) -> None:
    intruder = Signer.generate()
    signed = sign_receipt(intruder, domain, random_receipt())
    with pytest.raises(SignatureError) as info:
        verify_receipt(domain, signed, signer.address)
    assert f"signed by {intruder.address}, expected {signer.address}" in str(info.value)


def test_unsigned_receipt_rejected(domain: Domain, signer: Signer) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        verify_receipt(domain, random_receipt(), signer.address)


def test_truncated_signature_rejected(domain: Domain, signer: Signer) -> None:
    signed = sign_receipt(signer, domain, random_receipt())
    with pytest.raises(SignatureError, match="65 bytes"):
        verify_receipt(domain, dataclasses.replace(signed, signature=signed.signature[:64]), signer.address)


@pytest.mark.parametrize(
    "bad",
    ["AB" * 32, "0x" + "ab" * 31, "ab" * 31, "ab" * 33, "zz" * 32, ""],
)
def test_bad_hex_fields_rejected(domain: Domain, bad: str) -> None:
    receipt = dataclasses.replace(random_receipt(), output_hash=bad)
    with pytest.raises(SignatureError, match="output_hash must be exactly 64 lowercase hex"):
        receipt_digest(domain, receipt)
    with pytest.raises(SignatureError):
        receipt_typed_data(domain, receipt)


@pytest.mark.parametrize("attempt", [-1, 2**32, True])
def test_bad_attempt_rejected(domain: Domain, attempt: int) -> None:
    with pytest.raises(SignatureError, match="uint32"):
        receipt_digest(domain, dataclasses.replace(random_receipt(), attempt=attempt))


def test_bad_domain_rejected() -> None:
    with pytest.raises(SignatureError, match="not an Ethereum address"):
        domain_separator(Domain("TensorGrid", "1", 1, "0x1234"))
    with pytest.raises(SignatureError, match="uint256"):
        domain_separator(Domain("TensorGrid", "1", -1, "0x" + "11" * 20))


def test_typed_data_shape(domain: Domain) -> None:
    receipt: Receipt = random_receipt(4)
    data = receipt_typed_data(domain, receipt)
    assert data["primaryType"] == "Receipt"
    assert data["types"] == RECEIPT_TYPES
    assert data["message"]["jobId"] == "0x" + receipt.job_id
    assert data["domain"]["chainId"] == domain.chain_id
    data["types"]["Receipt"].clear()  # a caller's edits must not reach the shared constant
    assert RECEIPT_TYPES["Receipt"]


@pytest.mark.parametrize(
    "swap, field",
    [
        ({"name": "TensorGrid2"}, "name"),
        ({"version": "2"}, "version"),
        ({"chain_id": 1}, "chainId"),
        ({"verifying_contract": "0x" + "11" * 20}, "verifyingContract"),
        ({"verifying_contract": "not an address"}, "verifyingContract"),
    ],
)
def test_a_swapped_domain_is_refused_field_by_field(swap: dict[str, object], field: str) -> None:
    expected = DOMAINS[0]
    with pytest.raises(DomainMismatch, match=f"refusing to sign: .*{field}"):
        require_domain(expected, dataclasses.replace(expected, **swap))  # type: ignore[arg-type]


def test_the_same_domain_in_another_case_is_accepted() -> None:
    expected = DOMAINS[0]
    require_domain(expected, dataclasses.replace(expected, verifying_contract=expected.verifying_contract.lower()))
