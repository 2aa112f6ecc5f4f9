"""The daemons' --config TOML file in the one configuration layer: flag > env > file > default,
each value's origin recorded, bad files and values refused as usage errors (exit 2) naming the
file and key, and `config show` printing it all with secrets masked."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator import main as coordinator_main
from coordinator.config import LeaseTiming
from node import main as node_main
from tensorgrid import config
from tensorgrid.config import Setting
from tensorgrid.config_show import mask
from tensorgrid.errors import TensorGridError

SLOTS = Setting("--slots", "TOY_SLOTS", 1, type=int)
RATE = Setting("--rate", "TOY_RATE", 0.5, type=float)
FAST = Setting("--fast", "TOY_FAST", False, type=config.switch)
MODE = Setting("--mode", "TOY_MODE", "a", choices=("a", "b"))
DIR = Setting("--dir", "TOY_DIR", None, type=Path)
TOY = (SLOTS, RATE, FAST, MODE, DIR)
CONFIG = config.config_setting("TOY_CONFIG", "toy")


def parse(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    parser = config.add_settings(argparse.ArgumentParser(prog="toy"), CONFIG, *TOY)
    return config.parse_args(parser, argv, TOY, env, CONFIG)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flag_beats_env_beats_file_beats_default_and_each_origin_is_kept(tmp_path: Path) -> None:
    file = write(tmp_path / "toy.toml", 'slots = 3\nrate = 2\nfast = true\nmode = "b"\n')
    ns = parse(["--config", str(file), "--slots", "9"], {"TOY_RATE": "4.5"})
    assert (ns.slots, ns.rate, ns.fast, ns.mode, ns.dir) == (9, 4.5, True, "b", None)
    assert ns.origins == {
        "config": "flag",
        "slots": "flag",
        "rate": "env",
        "fast": "file",
        "mode": "file",
        "dir": "default",
    }
    ns = parse([], {"TOY_CONFIG": str(file), "TOY_SLOTS": ""})  # the file by its variable; empty is unset
    assert (ns.slots, ns.rate, ns.origins["config"], ns.origins["slots"]) == (3, 2.0, "env", "file")
    assert parse([], {}).origins["slots"] == "default"


def test_relative_paths_in_the_file_are_from_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc" / "toy.toml", 'dir = "state"\n')
    monkeypatch.chdir(tmp_path)
    assert parse(["--config", "etc/toy.toml"], {}).dir == tmp_path / "etc" / "state"
    assert parse(["--config", "etc/toy.toml", "--dir", "state"], {}).dir == Path("state")  # a flag: from here


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slot = 3\n", "unknown key 'slot' (did you mean 'slots'?)"),
        ("zzz = 3\n", "unknown key 'zzz'; known keys: dir, fast, mode, rate, slots"),
        ('slots = "3"\n', "slots must be a whole number, not a TOML string"),
        ("slots = 2.5\n", "slots must be a whole number, not a TOML float"),
        ("slots = true\n", "slots must be a whole number, not a TOML boolean"),
        ('fast = "yes"\n', "fast must be true or false, not a TOML string"),
        ('rate = "fast"\n', "rate must be a number, not a TOML string"),
        ('mode = "c"\n', "mode must be one of a, b"),
        ("dir = 5\n", "dir must be a string, not a TOML integer"),
        ("[toy]\nslots = 1\n", "unknown key 'toy'"),
        ("slots = \n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_a_usage_error_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    file = write(tmp_path / "toy.toml", text)
    with pytest.raises(SystemExit) as exit_:
        parse(["--config", str(file)], {})
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"toy: error: {file}" in err and message in err, err


def test_a_missing_file_and_a_bad_variable_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, env, message in (
        (["--config", str(tmp_path / "none.toml")], {}, f"cannot read the config file {tmp_path / 'none.toml'}"),
        ([], {"TOY_FAST": "maybe"}, "$TOY_FAST='maybe' is not a valid value for --fast"),
        ([], {"TOY_MODE": "c"}, "$TOY_MODE='c': --mode must be one of a, b"),
    ):
        with pytest.raises(SystemExit) as exit_:
            parse(argv, env)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_misspelt_variable_is_named_not_silently_ignored() -> None:
    env = {"TOY_SLOTS": "2", "TOY_SLOT": "3", "TOY_CONFIG": "x", "OTHER_SLOT": "1"}
    assert config.unknown_variables("TOY_", (*TOY, CONFIG), env) == ["TOY_SLOT"]
    assert config.unknown_variables("TOY_", (*TOY, CONFIG), {"TOY_SLOTS": "2"}) == []


def test_a_setting_required_by_the_node_may_come_from_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "node.toml", 'coordinator = "grid.example:7070"\nslots = 4\ndevice = "cpu"\n')
    ns = node_main.parse_args(["--config", str(file), "run"], env={"TENSORGRID_NODE_SLOTS": "2"})
    assert (ns.coordinator, ns.slots, ns.device) == ("grid.example:7070", 2, "cpu")


def test_the_coordinator_config_from_file_env_and_flags(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        'database_url = "postgresql://tg:pw@db:5432/tg"\nheartbeat_ms = 1000\nlease_ttl_ms = 4000\n'
        'data_dir = "var"\nblob_retention = "12h"\ninsecure = true\ndashboard_session_ttl = "90m"\n',
    )
    ns = coordinator_main.parse_args(
        ["run", "--config", str(file), "--lease-ttl-ms", "6000"], env={"TENSORGRID_COORDINATOR_HEARTBEAT_MS": "2000"}
    )
    c = coordinator_main.config_from(ns)
    assert (c.database_url, c.heartbeat_interval_ms, c.timing, c.data_dir, c.insecure) == (
        "postgresql://tg:pw@db:5432/tg",
        2000,
        LeaseTiming(ttl_ms=6000),
        tmp_path / "var",
        True,
    )
    assert c.blob_retention_ms == 12 * 3600 * 1000
    assert c.dashboard_session_ttl_ms == 90 * 60 * 1000
    assert c.session_ttl_ms == 24 * 3600 * 1000  # the default


@pytest.mark.parametrize(
    ("flag", "value", "field", "ms"),
    [
        ("--session-ttl", "2h", "session_ttl_ms", 2 * 3600 * 1000),
        ("--session-ttl", "7d", "session_ttl_ms", 7 * 24 * 3600 * 1000),
        ("--dashboard-session-ttl", "1m", "dashboard_session_ttl_ms", 60 * 1000),
    ],
)
def test_session_lifetimes_are_settings(flag: str, value: str, field: str, ms: int) -> None:
    c = coordinator_main.config_from(coordinator_main.parse_args(["run", flag, value], env={}))
    assert getattr(c, field) == ms


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--session-ttl", "30d"), ("--session-ttl", "10s"), ("--dashboard-session-ttl", "365d")],
)
def test_a_session_lifetime_out_of_bounds_is_refused(flag: str, value: str) -> None:
    # A bearer token that lives for a month is one a leaked log keeps useful for a month.
    ns = coordinator_main.parse_args(["run", flag, value], env={})
    with pytest.raises(TensorGridError, match=f"{flag} must lie between 1m and 7d"):
        coordinator_main.config_from(ns)


def test_masking_keeps_what_helps_and_hides_credentials() -> None:
    db = Setting("--db", "X", secret="password")
    rpc = Setting("--rpc", "Y", secret="path")
    assert mask(db, "postgresql://tg:s3cret@db:5432/tg") == "postgresql://tg:***@db:5432/tg"
    assert mask(db, "postgresql://tg@db/tg?password=s3cret") == "postgresql://tg@db/tg?***"
    assert mask(db, "postgresql://postgres@127.0.0.1:5432/test") == "postgresql://postgres@127.0.0.1:5432/test"
    assert mask(db, "") == "" and mask(db, "not a url") == "***"
    assert mask(rpc, "https://mainnet.example/v3/0123456789abcdef") == "https://mainnet.example/***"
    assert mask(rpc, "https://user:key@rpc.example:8545/") == "https://user:***@rpc.example:8545/"
    assert mask(rpc, "http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert mask(Setting("--plain", "Z"), "postgresql://tg:s3cret@db/tg") == "postgresql://tg:s3cret@db/tg"


def run(
    program: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGRID_")}
    return subprocess.run(
        [sys.executable, "-m", program, *args],
        capture_output=True,
        text=True,
        env=clean | (env or {}),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_coordinator_config_show_prints_origins_and_masks_secrets(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        'database_url = "postgresql://tg:s3cret@db:5432/tg"\nchain_rpc = "https://rpc.example/v3/k3yk3yk3y"\n'
        "heartbeat_ms = 1000\n",
    )
    env = {"TENSORGRID_COORDINATOR_CONFIG": str(file), "TENSORGRID_COORDINATOR_LEASE_TTL_MS": "9000"}
    shown = run("coordinator.main", "config", "show", "--listen", "127.0.0.1:9", env=env)
    assert shown.returncode == 0, shown.stderr
    misspelt = run("coordinator.main", "config", "show", env=env | {"TENSORGRID_COORDINATOR_LISTNE": "x"})
    assert "# $TENSORGRID_COORDINATOR_LISTNE is set but is no setting (misspelt?): ignored" in misspelt.stdout
    assert "$TENSORGRID_COORDINATOR_LISTNE is set but is no setting of tensorgrid-coordinator" in misspelt.stderr
    assert "s3cret" not in shown.stdout and "k3yk3yk3y" not in shown.stdout
    lines = {line.split(" = ")[0]: line for line in shown.stdout.splitlines() if " = " in line}
    assert lines["database_url"].startswith('database_url = "postgresql://tg:***@db:5432/tg"')
    assert lines["database_url"].endswith("# file, $TENSORGRID_DATABASE_URL")
    assert lines["listen"].endswith("# flag, $TENSORGRID_COORDINATOR_LISTEN")
    assert lines["lease_ttl_ms"].startswith("lease_ttl_ms = 9000") and "# env," in lines["lease_ttl_ms"]
    assert "# default," in lines["chain_id"] and f"# config file: {file} (from $TENSORGRID_COORDINATOR_CONFIG)" in (
        shown.stdout
    )
    as_json = run("coordinator.main", "config", "show", "--json", env=env)
    table = json.loads(as_json.stdout)
    assert table["config_file"] == str(file) and "s3cret" not in as_json.stdout
    assert table["settings"]["database_url"] == {
        "value": "postgresql://tg:***@db:5432/tg",
        "origin": "file",
        "flag": "--database-url",
        "env": "TENSORGRID_DATABASE_URL",
        "masked": True,
    }
    assert table["settings"]["heartbeat_ms"]["value"] == 1000 and table["settings"]["verbose"]["value"] is False


def test_config_show_reports_settings_that_disagree(tmp_path: Path) -> None:
    shown = run("coordinator.main", "config", "show", "--heartbeat-ms", "5000", "--lease-ttl-ms", "6000")
    assert shown.returncode == 1 and "heartbeat_ms = 5000" in shown.stdout
    assert "--lease-ttl-ms must be at least twice --heartbeat-ms" in shown.stderr


def test_a_bad_file_stops_the_daemons_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    file = write(tmp_path / "bad.toml", 'heartbeat_ms = "soon"\n')
    for program, args in (
        ("coordinator.main", ["run", "--config", str(file)]),
        ("node.main", ["--config", str(file), "address"]),
    ):
        done = run(program, *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"{file}: " in done.stderr and (
            "heartbeat_ms must be a whole number" in done.stderr or "unknown key" in done.stderr
        )


def test_node_config_show_never_prints_the_keystore_password(tmp_path: Path) -> None:
    file = write(tmp_path / "n.toml", 'coordinator = "grid:7070"\ndata_dir = "n"\n')
    env = {"TENSORGRID_NODE_CONFIG": str(file), "TENSORGRID_KEY_PASSWORD": "hunter2hunter2"}
    shown = run("node.main", "config", "show", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    table = json.loads(shown.stdout)
    assert "hunter2" not in shown.stdout
    assert table["notes"] == ["keystore password: $TENSORGRID_KEY_PASSWORD (set; not shown)"]
    assert table["settings"]["data_dir"] == {
        "value": str(tmp_path / "n"),
        "origin": "file",
        "flag": "--data-dir",
        "env": "TENSORGRID_NODE_DATA_DIR",
        "masked": False,
    }
    assert table["settings"]["coordinator"]["value"] == "grid:7070"
