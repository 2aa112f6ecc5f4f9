"""The coordinator's key: systemd's credential when its unit passes one, else --data-dir's."""

from __future__ import annotations

from pathlib import Path

from coordinator.config import key_file


def test_the_credential_wins_when_systemd_passes_one(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "coordinator.key").write_text("00" * 32)
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert key_file(tmp_path / "data", env) == credentials / "coordinator.key"


def test_data_dir_when_there_is_no_such_credential(tmp_path: Path) -> None:
    assert key_file(tmp_path / "data", {}) == tmp_path / "data" / "coordinator.key"
    # a unit passing other credentials only (e.g. the TLS key): the key stays in --data-dir
    assert (
        key_file(tmp_path / "data", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == tmp_path / "data" / "coordinator.key"
    )
