"""EIP-191 personal_sign messages: what a node or submitter signs to prove who it is.

Messages are plain text so that a person signing with a wallet can read what they sign.
Each names its purpose on the first line, so a signature for one purpose cannot be
replayed as another.
"""

from __future__ import annotations

from eth_hash.auto import keccak

from tensorgrid.crypto.keys import Signer, normalize_address, recover_address
from tensorgrid.digests import check_hex32
from tensorgrid.errors import SignatureError
from tensorgrid.types import Domain

_PERSONAL_PREFIX = b"\x19Ethereum Signed Message:\n"


def personal_digest(message: bytes) -> bytes:
    """keccak256("\\x19Ethereum Signed Message:\\n" + len(message) + message), as personal_sign."""
    return keccak(_PERSONAL_PREFIX + str(len(message)).encode("ascii") + message)


def registration_message(address: str, nonce: bytes, domain: Domain) -> bytes:
    """The text a node signs to register: binds its address to a coordinator-issued nonce
    and to the chain and contract it is registering with."""
    if not nonce:
        raise SignatureError("registration nonce must not be empty")
    lines = (
        "TensorGrid node registration",
        f"address: {normalize_address(address)}",
        f"nonce: {nonce.hex()}",
        f"chain: {domain.chain_id}",
        f"coordinator: {normalize_address(domain.verifying_contract)}",
    )
    return "\n".join(lines).encode("utf-8")


FULL_SCOPE = ""  # a session for every SubmitterService call (the only kind before scopes)
DASHBOARD_SCOPE = "dashboard"  # the web dashboard's read-only JSON API, and nothing over gRPC
SESSION_SCOPES = (FULL_SCOPE, DASHBOARD_SCOPE)


def session_message(address: str, nonce: bytes, scope: str = FULL_SCOPE) -> bytes:
    """The text a submitter signs to open a session: binds its address to a coordinator-issued nonce
    (the nonce carries the coordinator's MAC, so it is good at that coordinator only, and once)
    and, past the full scope, to the session's scope: a signature opens the scope it names and no
    other. The full scope's text is what it was before scopes existed, byte for byte."""
    if not nonce:
        raise SignatureError("session nonce must not be empty")
    if scope not in SESSION_SCOPES:
        raise SignatureError(f"unknown session scope {scope!r}: one of {', '.join(map(repr, SESSION_SCOPES))}")
    text = f"TensorGrid submitter session\naddress: {normalize_address(address)}\nnonce: {nonce.hex()}"
    return (text + f"\nscope: {scope}" if scope else text).encode()


def submit_message(spec_hash: str) -> bytes:
    """The text a submitter signs to submit the job whose spec hashes to `spec_hash`."""
    return f"TensorGrid job submission\nspec: {check_hex32(spec_hash, 'spec_hash', SignatureError)}".encode()


def cancel_message(job_id: str) -> bytes:
    """The text a submitter signs to cancel job `job_id`."""
    return f"TensorGrid job cancellation\njob: {check_hex32(job_id, 'job_id', SignatureError)}".encode()


def sign_message(signer: Signer, message: bytes) -> bytes:
    """A 65-byte personal_sign signature of `message` by `signer`."""
    return signer.sign_digest(personal_digest(message))


def recover_message_signer(message: bytes, signature: bytes) -> str:
    """The checksum address that personal_signed `message`; SignatureError if invalid."""
    return recover_address(personal_digest(message), signature)
