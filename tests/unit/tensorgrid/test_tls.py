"""The plain-text rule, certificate checks and the local CA (no network; tests/security/test_tls.py
runs them over real processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from tensorgrid.localca import make_local_ca
from tensorgrid.tls import ClientTls, TlsError, check_listen, explain_unavailable, is_loopback, server_credentials


@pytest.mark.parametrize(
    "target, loopback",
    [
        ("127.0.0.1:7070", True),
        ("127.8.9.10:1", True),
        ("localhost:7070", True),
        ("[::1]:7070", True),
        ("dns:///localhost:7070", True),
        ("0.0.0.0:7070", False),
        ("[::]:7070", False),
        ("10.0.0.5:7070", False),
        ("grid.example.org:443", False),
        ("localhost.evil.example:7070", False),
    ],
)
def test_loopback_is_an_address_of_this_machine_only(target: str, loopback: bool) -> None:
    assert is_loopback(target) is loopback


def test_client_plain_text_only_to_loopback_unless_insecure() -> None:
    assert ClientTls().plain_text("127.0.0.1:7070")
    assert not ClientTls().plain_text("10.0.0.5:7070")  # TLS with the system's roots
    assert not ClientTls(ca_cert=Path("ca.pem")).plain_text("127.0.0.1:7070")
    assert ClientTls(insecure=True).plain_text("10.0.0.5:7070")
    with pytest.raises(TlsError, match="contradict"):
        ClientTls(ca_cert=Path("ca.pem"), insecure=True)


def test_server_refuses_plain_text_off_loopback(tmp_path: Path) -> None:
    assert check_listen("127.0.0.1:0", None, None, insecure=False) is False
    assert check_listen("0.0.0.0:0", None, None, insecure=True) is False
    with pytest.raises(TlsError, match="refusing to serve plain text on 0.0.0.0:0"):
        check_listen("0.0.0.0:0", None, None, insecure=False)
    with pytest.raises(TlsError, match="go together"):
        check_listen("0.0.0.0:0", tmp_path / "c.pem", None, insecure=False)
    with pytest.raises(TlsError, match="contradict"):
        check_listen("0.0.0.0:0", tmp_path / "c.pem", tmp_path / "k.pem", insecure=True)
    assert check_listen("0.0.0.0:0", tmp_path / "c.pem", tmp_path / "k.pem", insecure=False) is True


def test_local_ca_names_loopback_and_keeps_the_key_private(tmp_path: Path) -> None:
    files = make_local_ca(tmp_path)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert files.key.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem", "server-key.pem", "server.pem"]  # no CA key
    server_credentials(files.cert, files.key)  # a matching pair loads


def test_bad_certificate_files_get_clear_errors(tmp_path: Path) -> None:
    files = make_local_ca(tmp_path / "a")
    other = make_local_ca(tmp_path / "b")
    with pytest.raises(TlsError, match=r"cannot read --tls-cert .*missing\.pem"):
        server_credentials(tmp_path / "missing.pem", files.key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsError, match="--tls-cert .* is not a PEM certificate"):
        server_credentials(garbage, files.key)
    with pytest.raises(TlsError, match="--tls-key .* is not an unencrypted PEM private key"):
        server_credentials(files.cert, files.cert)
    with pytest.raises(TlsError, match="is not the key of the certificate"):
        server_credentials(files.cert, other.key)
    with pytest.raises(TlsError, match="--ca-cert .* is not a PEM certificate"):
        ClientTls(ca_cert=files.key).credentials()


def test_handshake_failures_are_called_tls_failures() -> None:
    details = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Ssl handshake failed "
        "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
    )
    msg = explain_unavailable(details, "127.0.0.1:5", ClientTls(ca_cert=Path("/etc/ca.pem")))
    assert msg.startswith("TLS verification failed for coordinator 127.0.0.1:5") and "/etc/ca.pem" in msg
    refused = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Connection refused"
    assert "unreachable" in explain_unavailable(refused)


def test_tls_settings_come_from_flags_then_environment(tmp_path: Path) -> None:
    from coordinator import main as coordinator_main
    from tensorgrid import cli, config

    def client_ns(argv: list[str], env: dict[str, str]) -> object:
        return config.parse_args(cli.build_parser(), ["nodes", *argv], cli.SETTINGS, env)

    assert client_ns([], {}).insecure is False  # type: ignore[attr-defined]
    assert client_ns([], {"TENSORGRID_INSECURE": "yes"}).insecure is True  # type: ignore[attr-defined]
    assert client_ns(["--insecure"], {"TENSORGRID_INSECURE": "0"}).insecure is True  # type: ignore[attr-defined]
    ns = client_ns([], {"TENSORGRID_CA_CERT": str(tmp_path / "ca.pem")})
    assert ns.ca_cert == tmp_path / "ca.pem"  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        client_ns([], {"TENSORGRID_INSECURE": "maybe"})
    env = {"TENSORGRID_COORDINATOR_TLS_CERT": "c.pem", "TENSORGRID_COORDINATOR_TLS_KEY": "k.pem"}
    cfg = coordinator_main.config_from(coordinator_main.parse_args(["run"], env=env))
    assert (cfg.tls_cert, cfg.tls_key, cfg.insecure) == (Path("c.pem"), Path("k.pem"), False)
