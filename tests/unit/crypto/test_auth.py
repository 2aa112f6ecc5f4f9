from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_defunct

from tensorgrid.crypto import (
    Signer,
    cancel_message,
    personal_digest,
    recover_message_signer,
    registration_message,
    sign_message,
    submit_message,
)
from tensorgrid.errors import SignatureError
from tensorgrid.types import Domain


@pytest.mark.parametrize("message", [b"", b"hello", "ünïcode ✓".encode(), os.urandom(300)])
def test_personal_digest_matches_eth_account(message: bytes) -> None:
    assert personal_digest(message) == bytes(_hash_eip191_message(encode_defunct(primitive=message)))


def test_sign_message_matches_eth_account(signer: Signer) -> None:
    message = submit_message("ab" * 32)
    reference = Account.sign_message(encode_defunct(primitive=message), signer.private_key)
    assert sign_message(signer, message) == bytes(reference.signature)


def test_sign_recover_round_trip(signer: Signer) -> None:
    message = cancel_message("cd" * 32)
    signature = sign_message(signer, message)
    assert recover_message_signer(message, signature) == signer.address
    assert recover_message_signer(cancel_message("ce" * 32), signature) != signer.address


def test_messages_are_distinct_per_purpose() -> None:
    assert submit_message("ab" * 32) != cancel_message("ab" * 32)


def test_registration_message_content(signer: Signer, domain: Domain) -> None:
    nonce = bytes.fromhex("00ff10")
    text = registration_message(signer.address.lower(), nonce, domain).decode()
    assert text.splitlines() == [
        "TensorGrid node registration",
        f"address: {signer.address}",
        "nonce: 00ff10",
        f"chain: {domain.chain_id}",
        f"coordinator: {domain.verifying_contract}",
    ]


def test_registration_message_rejects_bad_input(signer: Signer, domain: Domain) -> None:
    with pytest.raises(SignatureError):
        registration_message("0x1234", b"n", domain)
    with pytest.raises(SignatureError):
        registration_message(signer.address, b"", domain)


@pytest.mark.parametrize("bad", ["AB" * 32, "ab" * 31, "0x" + "ab" * 32])
def test_submit_and_cancel_reject_bad_hex(bad: str) -> None:
    with pytest.raises(SignatureError, match="64 lowercase hex"):
        submit_message(bad)
    with pytest.raises(SignatureError, match="64 lowercase hex"):
        cancel_message(bad)
