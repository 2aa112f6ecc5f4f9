"""TLS for every gRPC connection: the one channel factory (SDK, node, CLI; sync and aio),
the coordinator's server credentials, and the rule for plain text.

The rule, on both ends:
- a coordinator serves TLS with --tls-cert/--tls-key; a client speaks TLS, verified against
  --ca-cert (else the system's roots);
- plain text only with an explicit --insecure, except on loopback: a coordinator listening on
  127.0.0.1/::1/localhost with no certificate, and a client dialling such an address with no
  --ca-cert, use plain text and say so in a log line (a local grid, the tests);
- a coordinator refuses to listen in plain text on any other address, and a client refuses plain
  text to any other target, unless --insecure is given.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tensorgrid.errors import TensorGridError
from tensorgrid.rpc import channel_options

log = logging.getLogger("tensorgrid.tls")
_HANDSHAKE_SIGNS = ("handshake", "certificate_verify_failed", "ssl", "tsi_", "certificate")


class TlsError(TensorGridError):
    """A certificate or key is missing or malformed, TLS verification failed, or plain text was refused."""


def host_of(target: str) -> str:
    """The host of HOST:PORT, [V6]:PORT or a gRPC name like dns:///HOST:PORT."""
    rest = target.split(":///", 1)[-1]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def is_loopback(target: str) -> bool:
    """Whether HOST:PORT names this machine only (127.0.0.0/8, ::1, localhost)."""
    host = host_of(target)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ClientTls:
    """How a client secures its channel: ca_cert (PEM) to verify the coordinator against, None
    for the system's roots; insecure for plain text, which is otherwise only for loopback."""

    ca_cert: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.insecure and self.ca_cert is not None:
            raise TlsError("--insecure and --ca-cert contradict each other: choose plain text or TLS")

    def plain_text(self, target: str) -> bool:
        """Whether a channel to target goes in plain text; raises if that is not allowed."""
        if self.insecure:
            return True
        if self.ca_cert is not None:
            return False
        if is_loopback(target):
            log.info("plain text to loopback %s (pass --ca-cert for TLS)", target)
            return True
        return False  # TLS with the system's roots

    def credentials(self) -> grpc.ChannelCredentials:
        roots = None if self.ca_cert is None else read_pem_certificates(self.ca_cert, "--ca-cert")
        return grpc.ssl_channel_credentials(root_certificates=roots)


def open_channel(target: str, tls: ClientTls | None = None, *, aio: bool = False, own_connection: bool = False) -> Any:
    """A grpc.Channel (aio: grpc.aio.Channel) to target, TLS unless the rule says plain text.

    own_connection: never share a TCP connection with this process's other channels to the same
    target (gRPC shares one by default): simulated nodes need one connection each, as real ones have."""
    tls = tls or ClientTls()
    options = [*channel_options(), *((("grpc.use_local_subchannel_pool", 1),) if own_connection else ())]
    if tls.plain_text(target):
        return grpc.aio.insecure_channel(target, options=options) if aio else grpc.insecure_channel(target, options)
    creds = tls.credentials()
    return (
        grpc.aio.secure_channel(target, creds, options=options) if aio else grpc.secure_channel(target, creds, options)
    )


def explain_unavailable(details: str, target: str = "", tls: ClientTls | None = None) -> str:
    """What to tell the user when a call failed with UNAVAILABLE (gRPC's status for a failed
    TLS handshake too, with the reason only in its details)."""
    where = f"coordinator {target}" if target else "coordinator"
    if any(sign in details.lower() for sign in _HANDSHAKE_SIGNS):
        against = "the system's root certificates"
        if tls is not None and tls.ca_cert is not None:
            against = f"the CA in {tls.ca_cert}"
        elif tls is None:
            against = "the CA given (--ca-cert, else the system's roots)"
        return (
            f"TLS verification failed for {where}: its certificate does not chain to {against} "
            f"or does not name the host dialled; check --ca-cert ({details})"
        )
    return f"{where} unreachable (if it serves TLS, is --ca-cert given?): {details}"


def read_pem_certificates(path: Path, flag: str) -> bytes:
    """The bytes of a PEM file holding one or more certificates; TlsError if it does not."""
    data = _read(path, flag)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TlsError(f"{flag} {path} is not a PEM certificate: {e}") from None
    return data


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """Credentials for --tls-cert/--tls-key, checked first so a bad file gets a clear error:
    the chain parses, the key parses (unencrypted PEM), and the key is the certificate's."""
    chain = read_pem_certificates(cert, "--tls-cert")
    key_pem = _read(key, "--tls-key")
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise TlsError(f"--tls-key {key} is not an unencrypted PEM private key: {e}") from None
    leaf = x509.load_pem_x509_certificates(chain)[0]
    if _public_der(private.public_key()) != _public_der(leaf.public_key()):
        raise TlsError(f"--tls-key {key} is not the key of the certificate in --tls-cert {cert}")
    return grpc.ssl_server_credentials([(key_pem, chain)])


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The same certificate and key for a plain socket server (the bulk port); check them with
    server_credentials first, which says precisely what is wrong with them."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"cannot serve TLS with --tls-cert {cert} and --tls-key {key}: {e}") from None
    return context


def check_listen(listen: str, tls_cert: Path | None, tls_key: Path | None, insecure: bool) -> bool:
    """Apply the server side of the rule; returns whether to serve TLS."""
    if (tls_cert is None) != (tls_key is None):
        raise TlsError("--tls-cert and --tls-key go together: give both or neither")
    if tls_cert is not None:
        if insecure:
            raise TlsError("--insecure and --tls-cert contradict each other: choose plain text or TLS")
        return True
    if insecure:
        log.warning("serving plain text on %s (--insecure): anyone on the path can read and change traffic", listen)
    elif is_loopback(listen):
        log.info("serving plain text on loopback %s (give --tls-cert/--tls-key for TLS)", listen)
    else:
        raise TlsError(
            f"refusing to serve plain text on {listen}: give --tls-cert and --tls-key, "
            "or --insecure to accept plain text on purpose"
        )
    return False


def _read(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TlsError(f"cannot read {flag} {path}: {e.strerror or e}") from None


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]
