"""secp256k1 keys in the Ethereum style: signing, recovery, addresses and keystores.

The hot path (sign a digest, recover its signer) calls coincurve directly: the
coordinator recovers one receipt signer per task, and eth-account's generic path is
an order of magnitude slower. eth-account is used only to encrypt and decrypt
keystore files, where speed does not matter and compatibility with geth does.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import coincurve
from eth_hash.auto import keccak

from tensorgrid.errors import KeystoreError, SignatureError, TensorGridError

# Order of the secp256k1 group; a signature with s > n/2 has a twin (n - s) that also
# verifies, so only the low-s form is accepted (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2

SIGNATURE_LENGTH = 65
_ADDRESS_RE = re.compile(r"(?:0x)?([0-9a-fA-F]{40})")
# Cheap scrypt cost for tests only: about 1 ms instead of about 1 s per keystore.
_LIGHT_SCRYPT_N = 2**4


def checksum_address(raw: bytes) -> str:
    """EIP-55 checksum form of a 20-byte address."""
    hex_addr = raw.hex()
    hashed = keccak(hex_addr.encode("ascii")).hex()
    chars = [c.upper() if int(h, 16) >= 8 else c for c, h in zip(hex_addr, hashed, strict=False)]
    return "0x" + "".join(chars)


def _public_key_to_address(public_key: coincurve.PublicKey) -> str:
    return _address_of(public_key.format(compressed=False))


@lru_cache(maxsize=4096)
def _address_of(uncompressed: bytes) -> str:
    # Uncompressed SEC1 is 0x04 || X || Y; the address is the last 20 bytes of keccak(X || Y).
    # Memoized: a coordinator recovers the same few thousand node keys from every receipt, and
    # the two keccaks (address, then checksum) cost as much as the recovery itself.
    return checksum_address(keccak(uncompressed[1:])[12:])


@lru_cache(maxsize=4096)
def normalize_address(address: str) -> str:
    """Return `address` in EIP-55 checksum form.

    Accepts 40 hex digits with or without 0x, in any case. A mixed-case input must carry
    a correct checksum (it would otherwise hide a typo). Raises SignatureError with a
    message naming the bad input.
    """
    if not isinstance(address, str):
        raise SignatureError(f"address must be a string, got {type(address).__name__}")
    match = _ADDRESS_RE.fullmatch(address.strip())
    if match is None:
        raise SignatureError(f"not an Ethereum address: {address!r} (expected 0x + 40 hex digits)")
    digits = match.group(1)
    result = checksum_address(bytes.fromhex(digits))
    mixed_case = digits != digits.lower() and digits != digits.upper()
    if mixed_case and result[2:] != digits:
        raise SignatureError(f"bad EIP-55 checksum in address {address!r} (did you mean {result}?)")
    return result


class Signer:
    """A secp256k1 private key that signs 32-byte digests the way Ethereum does."""

    __slots__ = ("_key", "address")

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise SignatureError(f"private key must be 32 bytes, got {len(private_key)}")
        secret = int.from_bytes(private_key, "big")
        if not 0 < secret < SECP256K1_N:
            raise SignatureError("private key is out of range for secp256k1")
        self._key = coincurve.PrivateKey(private_key)
        self.address: str = _public_key_to_address(self._key.public_key)

    @classmethod
    def generate(cls) -> Signer:
        """A fresh random key from the operating system's CSPRNG."""
        while True:
            candidate = os.urandom(32)
            if 0 < int.from_bytes(candidate, "big") < SECP256K1_N:
                return cls(candidate)

    @classmethod
    def from_hex(cls, private_key_hex: str) -> Signer:
        """A signer from 64 hex digits, with or without 0x."""
        text = private_key_hex.strip().removeprefix("0x").removeprefix("0X")
        if len(text) != 64:
            raise SignatureError("private key must be 64 hex digits")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise SignatureError("private key must be 64 hex digits") from None
        return cls(raw)

    @property
    def private_key(self) -> bytes:
        """The raw 32-byte secret. Handle with care: never log it."""
        return bytes(self._key.secret)

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a 32-byte digest: 65 bytes r || s || v, low-s, v in {27, 28}."""
        if len(digest) != 32:
            raise SignatureError(f"digest must be 32 bytes, got {len(digest)}")
        # hasher=None: the digest is already keccak'd; coincurve would sha256 it otherwise.
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes((sig[64] + 27,))

    def __repr__(self) -> str:
        return f"Signer({self.address})"


def recover_address(digest: bytes, signature: bytes) -> str:
    """The checksum address whose key made `signature` over the 32-byte `digest`.

    Raises SignatureError on a wrong length, a v other than 27/28 (0/1 is also accepted),
    r or s out of range, a malleable high-s signature, or one that recovers no key.
    """
    if len(digest) != 32:
        raise SignatureError(f"digest must be 32 bytes, got {len(digest)}")
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureError(f"signature must be {SIGNATURE_LENGTH} bytes, got {len(signature)}")
    v = signature[64]
    if v in (27, 28):
        v -= 27
    elif v not in (0, 1):
        raise SignatureError(f"signature has invalid v={v} (expected 27 or 28)")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < r < SECP256K1_N or not 0 < s < SECP256K1_N:
        raise SignatureError("signature r or s is out of range")
    if s > SECP256K1_HALF_N:
        raise SignatureError("signature is malleable (high s); only low-s signatures are accepted")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(signature[:64] + bytes((v,)), digest, hasher=None)
    except Exception as exc:  # coincurve raises plain Exception on failed recovery
        raise SignatureError(f"signature does not recover a public key: {exc}") from None
    return _public_key_to_address(public_key)


def save_keystore(
    signer: Signer,
    path: str | os.PathLike[str],
    password: str,
    *,
    light: bool = False,
    overwrite: bool = False,
) -> Path:
    """Encrypt `signer`'s key into a geth-compatible v3 keystore at `path` (mode 0600).

    `light=True` uses a tiny scrypt cost: for tests only, never for a real key.
    Refuses to replace an existing file unless `overwrite=True`. Returns the path.
    """
    from eth_account import Account  # slow import, only needed here

    target = Path(path)
    if target.exists() and not overwrite:
        raise KeystoreError(f"keystore {target} already exists; refusing to overwrite it")
    keyfile = Account.encrypt(signer.private_key, password, kdf="scrypt", iterations=_LIGHT_SCRYPT_N if light else None)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a private temp file, then rename: the key never sits in a world-readable file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(keyfile, handle)
        os.chmod(tmp, 0o600)  # in case a umask or an odd filesystem widened it
        if overwrite:
            os.replace(tmp, target)
        else:
            # link() fails if the target exists, so a concurrent writer cannot be clobbered.
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise KeystoreError(f"keystore {target} already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def load_keystore(path: str | os.PathLike[str], password: str) -> Signer:
    """Decrypt the keystore at `path` into a Signer.

    Raises KeystoreError if the file is missing, is not a keystore, or the password is wrong.
    """
    from eth_account import Account

    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeystoreError(f"no keystore at {target}; run `tensorgrid-node init` first") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read keystore {target}: {exc.strerror}") from None
    try:
        keyfile = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeystoreError(f"keystore {target} is not valid JSON: {exc}") from None
    if not isinstance(keyfile, dict) or "crypto" not in keyfile and "Crypto" not in keyfile:
        raise KeystoreError(f"{target} is not an Ethereum keystore file")
    try:
        raw = bytes(Account.decrypt(keyfile, password))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise KeystoreError(f"wrong password for keystore {target}") from None
        raise KeystoreError(f"keystore {target} is corrupt: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise KeystoreError(f"keystore {target} is malformed: {exc!r}") from None
    return Signer(raw)


def write_key_file(path: str | os.PathLike[str], signer: Signer) -> Path:
    """Write a raw (unencrypted) hex key file, created 0600 and never over an existing file.

    For keys that a service must read unattended (the coordinator's, a devnet's accounts);
    node operators get an encrypted keystore instead.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.private_key.hex())
    return target


def load_or_create_key_file(path: str | os.PathLike[str]) -> tuple[Signer, bool]:
    """The key in a hex key file, made on first use; returns (signer, whether it was created)."""
    target = Path(path)
    if not target.exists():
        signer = Signer.generate()
        write_key_file(target, signer)
        return signer, True
    try:
        return Signer.from_hex(target.read_text().strip()), False
    except (ValueError, TensorGridError) as e:
        raise KeystoreError(f"{target} does not hold a private key: {e}") from None
