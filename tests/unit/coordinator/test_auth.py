"""Registration challenges: issued per address, fresh, and unforgeable."""

from __future__ import annotations

import pytest

from coordinator.api.auth import CHALLENGE_TTL_MS, check_challenge, make_challenge
from coordinator.errors import PermissionDenied

SECRET = b"s" * 32
A = "0x" + "aa" * 20
B = "0x" + "bb" * 20


def test_fresh_challenge_for_the_same_address_passes() -> None:
    nonce = make_challenge(SECRET, A, 1_000)
    check_challenge(SECRET, A, nonce, 1_000 + CHALLENGE_TTL_MS)
    check_challenge(SECRET, A.upper().replace("0X", "0x"), nonce, 2_000)  # case does not matter


@pytest.mark.parametrize(
    ("secret", "address", "now", "message"),
    [
        (SECRET, B, 2_000, "not issued for this address"),
        (b"x" * 32, A, 2_000, "not issued for this address"),
        (SECRET, A, 1_000 + CHALLENGE_TTL_MS + 1, "expired"),
    ],
)
def test_wrong_address_secret_or_age_is_refused(secret: bytes, address: str, now: int, message: str) -> None:
    nonce = make_challenge(SECRET, A, 1_000)
    with pytest.raises(PermissionDenied, match=message):
        check_challenge(secret, address, nonce, now)


def test_tampered_or_malformed_nonce_is_refused() -> None:
    nonce = bytearray(make_challenge(SECRET, A, 1_000))
    nonce[3] ^= 1
    with pytest.raises(PermissionDenied):
        check_challenge(SECRET, A, bytes(nonce), 2_000)
    with pytest.raises(PermissionDenied, match="malformed"):
        check_challenge(SECRET, A, b"short", 2_000)
