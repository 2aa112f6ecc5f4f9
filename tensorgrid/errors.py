"""One root exception for everything TensorGrid raises on purpose.

Each message is meant for the person at the keyboard: it says what went wrong and,
where there is one, what to do about it.
"""

from __future__ import annotations


class TensorGridError(Exception):
    """Root of every error TensorGrid raises deliberately."""


class SpecError(TensorGridError):
    """A job spec is malformed or asks for something impossible."""


class UnsafeFileError(TensorGridError):
    """A model or tensor file is refused: it would need pickle, or breaks a safety limit."""


class InvalidTensorFile(TensorGridError):
    """A tensor file is not well-formed safetensors, or does not fit the job."""


class BlobError(TensorGridError):
    """A blob is missing, too large, or its bytes do not match its hash."""


class HashMismatch(BlobError):
    """The bytes received do not hash to what was promised."""


class SignatureError(TensorGridError):
    """A signature is malformed or was not made by the expected key."""


class DomainMismatch(SignatureError):
    """The coordinator asked for signatures under an EIP-712 domain other than the deployment's."""


class KeystoreError(TensorGridError):
    """A keystore file is missing, unreadable, or the password is wrong."""


class ExecutionError(TensorGridError):
    """A workload failed while running; `kind` says how (see tensorgrid.types.ErrorKind)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
