"""`tensorgrid-node init / address`: an encrypted key, clear errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def node_cli(*args: str, password: str | None = "pw") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TENSORGRID_KEY_PASSWORD"}
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
