"""Keys, signatures, keystores, EIP-712 receipts and EIP-191 auth messages."""

from tensorgrid.crypto.auth import (
    cancel_message,
    personal_digest,
    recover_message_signer,
    registration_message,
    session_message,
    sign_message,
    submit_message,
)
from tensorgrid.crypto.keys import (
    Signer,
    checksum_address,
    load_keystore,
    load_or_create_key_file,
    normalize_address,
    recover_address,
    save_keystore,
    write_key_file,
)
from tensorgrid.crypto.receipts import (
    RECEIPT_TYPES,
    domain_separator,
    receipt_digest,
    receipt_struct_hash,
    receipt_typed_data,
    recover_receipt_signer,
    require_domain,
    sign_receipt,
    verify_receipt,
)

__all__ = [
    "RECEIPT_TYPES",
    "Signer",
    "cancel_message",
    "checksum_address",
    "domain_separator",
    "load_keystore",
    "load_or_create_key_file",
    "normalize_address",
    "personal_digest",
    "receipt_digest",
    "receipt_struct_hash",
    "receipt_typed_data",
    "recover_address",
    "recover_message_signer",
    "recover_receipt_signer",
    "registration_message",
    "require_domain",
    "session_message",
    "save_keystore",
    "sign_message",
    "sign_receipt",
    "submit_message",
    "verify_receipt",
    "write_key_file",
]
