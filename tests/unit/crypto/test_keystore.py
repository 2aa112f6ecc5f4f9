from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from eth_account import Account

from tensorgrid.crypto import Signer, load_keystore, save_keystore
from tensorgrid.errors import KeystoreError


def test_round_trip(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "nested" / "dir" / "node.json"
    save_keystore(signer, path, "hunter2", light=True)
    assert load_keystore(path, "hunter2").address == signer.address


def test_file_is_eth_account_compatible(tmp_path: Path, signer: Signer) -> None:
    path = save_keystore(signer, tmp_path / "k.json", "pw", light=True)
    keyfile = json.loads(path.read_text())
    assert keyfile["version"] == 3 and keyfile["crypto"]["kdf"] == "scrypt"
    assert keyfile["crypto"]["kdfparams"]["n"] < 2**10  # light really is light
    assert bytes(Account.decrypt(keyfile, "pw")) == signer.private_key


def test_loads_keystore_made_by_eth_account(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "geth.json"
    path.write_text(json.dumps(Account.encrypt(signer.private_key, "pw", kdf="pbkdf2", iterations=2)))
    assert load_keystore(path, "pw").address == signer.address


def test_file_mode_0600(tmp_path: Path, signer: Signer) -> None:
    path = save_keystore(signer, tmp_path / "k.json", "pw", light=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]  # no temp file left behind


def test_wrong_password(tmp_path: Path, signer: Signer) -> None:
    path = save_keystore(signer, tmp_path / "k.json", "right", light=True)
    with pytest.raises(KeystoreError, match=f"wrong password for keystore {path}"):
        load_keystore(path, "wrong")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="run `tensorgrid-node init` first"):
        load_keystore(tmp_path / "absent.json", "pw")


@pytest.mark.parametrize("content", ["not json {", "[]", '{"version": 3}'])
def test_garbage_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(KeystoreError):
        load_keystore(path, "pw")


def test_corrupt_keystore(tmp_path: Path, signer: Signer) -> None:
    path = save_keystore(signer, tmp_path / "k.json", "pw", light=True)
    keyfile = json.loads(path.read_text())
    del keyfile["crypto"]["kdfparams"]
    path.write_text(json.dumps(keyfile))
    with pytest.raises(KeystoreError, match="malformed|corrupt"):
        load_keystore(path, "pw")


def test_refuses_overwrite(tmp_path: Path, signer: Signer) -> None:
    path = save_keystore(signer, tmp_path / "k.json", "pw", light=True)
    other = Signer.generate()
    with pytest.raises(KeystoreError, match="already exists"):
        save_keystore(other, path, "pw", light=True)
    assert load_keystore(path, "pw").address == signer.address
    save_keystore(other, path, "pw", light=True, overwrite=True)
    assert load_keystore(path, "pw").address == other.address
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
