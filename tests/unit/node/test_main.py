"""`tensorgrid-node init / address`: an encrypted key, clear errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tensorgrid.crypto import Signer, load_keystore
from tensorgrid.localgrid import PASSWORD, LocalGrid


def node_cli(
    *args: str, password: str | None = "pw", extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TENSORGRID_KEY_PASSWORD"} | (extra_env or {})
    if password is not None:
        env["TENSORGRID_KEY_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "node.main", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_init_then_address(tmp_path: Path) -> None:
    ks = tmp_path / "k" / "node.json"
    made = node_cli("--keystore", str(ks), "init", "--light-kdf")
    assert made.returncode == 0, made.stderr
    address = made.stdout.split()[2]
    assert address.startswith("0x") and len(address) == 42
    assert stat.S_IMODE(ks.stat().st_mode) == 0o600
    assert "ciphertext" in ks.read_text() and address[2:].lower() in ks.read_text().lower()
    shown = node_cli("--keystore", str(ks), "address")
    assert shown.returncode == 0 and shown.stdout.strip() == address


def test_init_imports_a_key_from_the_named_variable(tmp_path: Path) -> None:
    signer = Signer.generate()
    ks = tmp_path / "node.json"
    made = node_cli(
        "--keystore", str(ks), "init", "--light-kdf", "--import-key-env", "IMPORTED",
        extra_env={"IMPORTED": signer.private_key.hex()},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.split()[2] == signer.address
    assert load_keystore(ks, "pw").address == signer.address


def test_a_local_grid_keystore_opens_in_the_node_cli(tmp_path: Path) -> None:
    """LocalGrid writes its nodes' keystores itself, as `init --light-kdf` would."""
    key = Signer.generate()
    ks = LocalGrid(tmp_path).create_node_key("node0", key.private_key.hex())
    shown = node_cli("--keystore", str(ks), "address", password=PASSWORD)
    assert shown.returncode == 0 and shown.stdout.strip() == key.address
    assert stat.S_IMODE(ks.stat().st_mode) == 0o600
    fresh = LocalGrid(tmp_path).create_node_key("node1")
    assert load_keystore(fresh, PASSWORD).address not in (key.address, "")


def test_refuses_to_overwrite_and_reports_bad_passwords(tmp_path: Path) -> None:
    ks = tmp_path / "node.json"
    assert node_cli("--keystore", str(ks), "init", "--light-kdf").returncode == 0
    again = node_cli("--keystore", str(ks), "init", "--light-kdf")
    assert again.returncode == 1 and "--force" in again.stderr
    wrong = node_cli("--keystore", str(ks), "address", password="nope")
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr
    missing = node_cli("--keystore", str(tmp_path / "none.json"), "address")
    assert missing.returncode == 1 and "tensorgrid-node init" in missing.stderr
    no_password = node_cli("--keystore", str(ks), "address", password=None)
    assert no_password.returncode == 1 and "TENSORGRID_KEY_PASSWORD" in no_password.stderr
