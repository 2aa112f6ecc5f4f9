from __future__ import annotations

import os

import coincurve
import pytest
from eth_account import Account

from tensorgrid.crypto import Signer, normalize_address, recover_address
from tensorgrid.crypto.keys import SECP256K1_N
from tensorgrid.errors import SignatureError


def test_address_matches_eth_account(signer: Signer) -> None:
    assert signer.address == Account.from_key(signer.private_key).address


def test_from_hex_round_trip(signer: Signer) -> None:
    again = Signer.from_hex("0x" + signer.private_key.hex())
    assert again.address == signer.address
    assert Signer.from_hex(signer.private_key.hex()).address == signer.address


@pytest.mark.parametrize("bad", ["", "00" * 31, "zz" * 32, "00" * 32, f"{SECP256K1_N:064x}"])
def test_from_hex_rejects_bad_keys(bad: str) -> None:
    with pytest.raises(SignatureError):
        Signer.from_hex(bad)


def test_sign_digest_matches_eth_account(signer: Signer) -> None:
    digest = os.urandom(32)
    signature = signer.sign_digest(digest)
    reference = Account.unsafe_sign_hash(digest, signer.private_key)
    assert signature == bytes(reference.signature)
    assert len(signature) == 65 and signature[64] in (27, 28)


def test_sign_recover_round_trip(signer: Signer) -> None:
    for _ in range(20):
        digest = os.urandom(32)
        assert recover_address(digest, signer.sign_digest(digest)) == signer.address


def test_recover_accepts_v_0_1(signer: Signer) -> None:
    digest = os.urandom(32)
    sig = signer.sign_digest(digest)
    assert recover_address(digest, sig[:64] + bytes((sig[64] - 27,))) == signer.address


def test_other_digest_recovers_other_address(signer: Signer) -> None:
    sig = signer.sign_digest(os.urandom(32))
    assert recover_address(os.urandom(32), sig) != signer.address


def test_high_s_malleable_twin_rejected(signer: Signer) -> None:
    digest = os.urandom(32)
    sig = signer.sign_digest(digest)
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - sig[64],))
    # The twin is a genuine signature by the same key (so rejecting it is a policy, not luck).
    raw_twin = twin[:64] + bytes((twin[64] - 27,))
    pub = coincurve.PublicKey.from_signature_and_message(raw_twin, digest, hasher=None)
    assert pub == coincurve.PublicKey.from_secret(signer.private_key)
    with pytest.raises(SignatureError, match="high s"):
        recover_address(digest, twin)


@pytest.mark.parametrize("length", [0, 64, 66, 130])
def test_wrong_length_signature_rejected(signer: Signer, length: int) -> None:
    with pytest.raises(SignatureError, match="65 bytes"):
        recover_address(os.urandom(32), b"\x01" * length)


@pytest.mark.parametrize("v", [2, 26, 29, 35, 255])
def test_bad_v_rejected(signer: Signer, v: int) -> None:
    digest = os.urandom(32)
    sig = signer.sign_digest(digest)
    with pytest.raises(SignatureError, match="invalid v"):
        recover_address(digest, sig[:64] + bytes((v,)))


def test_zero_r_or_s_rejected() -> None:
    with pytest.raises(SignatureError, match="out of range"):
        recover_address(os.urandom(32), bytes(32) + b"\x01" * 32 + b"\x1b")
    with pytest.raises(SignatureError, match="out of range"):
        recover_address(os.urandom(32), b"\x01" * 32 + bytes(32) + b"\x1b")


def test_wrong_digest_length_rejected(signer: Signer) -> None:
    with pytest.raises(SignatureError):
        signer.sign_digest(b"short")
    with pytest.raises(SignatureError):
        recover_address(b"short", signer.sign_digest(os.urandom(32)))


def test_normalize_address(signer: Signer) -> None:
    lower = signer.address.lower()
    assert normalize_address(lower) == signer.address
    assert normalize_address(lower[2:]) == signer.address
    assert normalize_address("0x" + lower[2:].upper()) == signer.address
    assert normalize_address(signer.address) == signer.address


@pytest.mark.parametrize("bad", ["", "0x", "0x1234", "0x" + "g" * 40, "0x" + "a" * 41])
def test_normalize_address_rejects_garbage(bad: str) -> None:
    with pytest.raises(SignatureError, match="not an Ethereum address"):
        normalize_address(bad)


def test_normalize_address_rejects_bad_checksum() -> None:
    good = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    bad = good[:3] + good[3].swapcase() + good[4:]  # flip the case of one letter
    assert bad != good
    with pytest.raises(SignatureError, match="checksum"):
        normalize_address(bad)
