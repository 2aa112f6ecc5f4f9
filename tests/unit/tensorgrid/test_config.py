"""One configuration layer for the three programs: flag > environment variable > default
(the daemons' --config file, between the variable and the default: test_config_file.py)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from coordinator import main as coordinator_main
from coordinator.config import CoordinatorConfig, LeaseTiming, Limits, ReviewSettings
from node import main as node_main
from tensorgrid import cli, config
from tensorgrid.config import Setting
from tensorgrid.errors import TensorGridError

ROOT = Path(__file__).resolve().parents[3]


def toy(*settings: Setting) -> argparse.ArgumentParser:
    return config.add_settings(argparse.ArgumentParser(prog="toy"), *settings)


def test_flag_beats_env_beats_default() -> None:
    slots = Setting("--slots", "TOY_SLOTS", 1, type=int)
    parser = toy(slots)
    assert config.parse_args(parser, [], [slots], env={}).slots == 1
    assert config.parse_args(parser, [], [slots], env={"TOY_SLOTS": "3"}).slots == 3
    assert config.parse_args(parser, ["--slots", "5"], [slots], env={"TOY_SLOTS": "3"}).slots == 5
    assert config.parse_args(parser, [], [slots], env={"TOY_SLOTS": ""}).slots == 1  # empty: unset


def test_bad_env_values_and_missing_required_settings_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    slots = Setting("--slots", "TOY_SLOTS", 1, type=int)
    mode = Setting("--mode", "TOY_MODE", "a", choices=("a", "b"))
    need = Setting("--need", "TOY_NEED", required=True)
    parser = toy(slots, mode, need)
    for env, message in (
        ({"TOY_SLOTS": "many", "TOY_NEED": "x"}, "$TOY_SLOTS='many' is not a valid value for --slots"),
        ({"TOY_MODE": "c", "TOY_NEED": "x"}, "--mode must be one of a, b"),
        ({}, "--need is required (or set $TOY_NEED)"),
    ):
        with pytest.raises(SystemExit) as exit_:
            config.parse_args(parser, [], [slots, mode, need], env=env)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_defaults_under_home_follow_tensorgrid_home() -> None:
    key = config.under_home("submitter.key")
    assert key.compute({"TENSORGRID_HOME": "/h"}) == Path("/h/submitter.key")
    assert key.compute({}) == Path.home() / ".tensorgrid" / "submitter.key"


def test_tensorgrid_cli_settings() -> None:
    def parse(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
        return config.parse_args(cli.build_parser(), ["job", "list", *argv], cli.SETTINGS, env)

    ns = parse([], {})
    assert (ns.coordinator, ns.chain_rpc, ns.deployment) == ("127.0.0.1:7070", "", None)
    assert ns.key == Path.home() / ".tensorgrid" / "submitter.key"
    env = {"TENSORGRID_COORDINATOR": "c:1", "TENSORGRID_HOME": "/h", "TENSORGRID_DEPLOYMENT": "d.json"}
    ns = parse([], env)
    assert (ns.coordinator, ns.key, ns.deployment) == ("c:1", Path("/h/submitter.key"), Path("d.json"))
    assert parse([], env | {"TENSORGRID_KEY": "/k"}).key == Path("/k")
    ns = parse(["--coordinator", "f:2", "--key", "/f", "--chain-rpc", "http://x"], env | {"TENSORGRID_KEY": "/k"})
    assert (ns.coordinator, ns.key, ns.chain_rpc) == ("f:2", Path("/f"), "http://x")


def test_node_cli_settings() -> None:
    ns = node_main.parse_args(["run", "--coordinator", "c:1"], env={"TENSORGRID_HOME": "/h"})
    assert (ns.slots, ns.threads, ns.device, ns.cache_gib, ns.memory_gib, ns.stake_wei) == (1, 0, "auto", 10.0, None, 0)
    assert (ns.keystore, ns.data_dir) == (Path("/h/node-key.json"), Path("/h/node"))
    env = {"TENSORGRID_NODE_SLOTS": "3", "TENSORGRID_CHAIN_RPC": "http://chain", "TENSORGRID_COORDINATOR": "e:1"}
    ns = node_main.parse_args(["run"], env=env)
    assert (ns.slots, ns.chain_rpc, ns.coordinator) == (3, "http://chain", "e:1")
    ns = node_main.parse_args(["--keystore", "/k", "run", "--slots", "5", "--coordinator", "f:1"], env=env)
    assert (ns.slots, ns.coordinator, ns.keystore) == (5, "f:1", Path("/k"))
    with pytest.raises(SystemExit):
        node_main.parse_args(["run"], env={})  # a node must be told its coordinator
    assert node_main.parse_args(["address"], env={"TENSORGRID_NODE_KEYSTORE": "/ks"}).keystore == Path("/ks")


def test_coordinator_defaults_are_coordinator_config_defaults() -> None:
    assert coordinator_main.config_from(coordinator_main.parse_args(["run"], env={})) == CoordinatorConfig()


def test_coordinator_cli_settings() -> None:
    env = {
        "TENSORGRID_DATABASE_URL": "postgresql://db/x",
        "TENSORGRID_COORDINATOR_HEARTBEAT_MS": "1000",
        "TENSORGRID_COORDINATOR_LEASE_TTL_MS": "4000",
        "TENSORGRID_COORDINATOR_MAX_SHARD_MIB": "1",
        "TENSORGRID_CHAIN_RPC": "http://chain",
    }
    c = coordinator_main.config_from(coordinator_main.parse_args(["run", "--heartbeat-ms", "2000"], env=env))
    assert (c.database_url, c.heartbeat_interval_ms, c.timing, c.chain_rpc) == (
        "postgresql://db/x",
        2000,
        LeaseTiming(ttl_ms=4000),
        "http://chain",
    )
    assert c.limits == Limits(max_shard_bytes=1 << 20)


def test_the_per_node_lease_cap_is_a_setting_of_at_least_one() -> None:
    env = {"TENSORGRID_COORDINATOR_MAX_NODE_LEASES": "8"}
    assert coordinator_main.config_from(coordinator_main.parse_args(["run"], env=env)).timing.per_node == 8
    with pytest.raises(TensorGridError, match="--max-node-leases must be at least 1"):
        coordinator_main.config_from(coordinator_main.parse_args(["run", "--max-node-leases", "0"], env={}))


@pytest.mark.parametrize("flag", ["--referee-time-s", "--referee-memory-mib"])
@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_the_referees_limits_must_bound_it(flag: str, value: str) -> None:
    # The sandbox reads 0 as "no limit": a stranger's graph could then hold the referee for ever.
    with pytest.raises(TensorGridError, match="must be above 0"):
        coordinator_main.config_from(coordinator_main.parse_args(["run", flag, value], env={}))


def test_the_review_settings_come_from_flags_and_variables() -> None:
    env = {"TENSORGRID_COORDINATOR_REVIEW_STALLS": "3", "TENSORGRID_COORDINATOR_UNDECIDED_QUORUM": "5"}
    argv = ["run", "--review-budget-factor", "2.5", "--undecided-quorum", "4"]
    c = coordinator_main.config_from(coordinator_main.parse_args(argv, env=env))
    assert c.reviews == ReviewSettings(budget_factor=2.5, stalls=3, quorum=4)
    assert CoordinatorConfig().reviews == ReviewSettings(budget_factor=4.0, stalls=2, quorum=2)  # unchanged


@pytest.mark.parametrize(
    ("flag", "value", "bounds"),
    [
        ("--review-budget-factor", "0", "between 1 and 100"),
        ("--review-budget-factor", "-4", "between 1 and 100"),
        ("--review-budget-factor", "0.5", "between 1 and 100"),  # less than a node's own time limit
        ("--review-budget-factor", "nan", "between 1 and 100"),
        ("--review-budget-factor", "1e6", "between 1 and 100"),
        ("--review-stalls", "0", "between 1 and 10"),
        ("--review-stalls", "-1", "between 1 and 10"),
        ("--review-stalls", "1000", "between 1 and 10"),
        ("--undecided-quorum", "0", "between 1 and 10"),
        ("--undecided-quorum", "-2", "between 1 and 10"),
        ("--undecided-quorum", "500", "between 1 and 10"),
    ],
)
def test_the_review_settings_are_bounded(flag: str, value: str, bounds: str) -> None:
    with pytest.raises(TensorGridError, match=f"{flag} must lie {bounds}, got"):
        coordinator_main.config_from(coordinator_main.parse_args(["run", flag, value], env={}))


@pytest.mark.parametrize(
    ("parser", "settings"),
    [
        (lambda: cli.build_parser(), cli.SETTINGS),
        (lambda: node_main.build_parser(), (*node_main.SETTINGS, node_main.CONFIG)),
        (lambda: coordinator_main.build_parser(), (*coordinator_main.SETTINGS, coordinator_main.CONFIG)),
    ],
)
def test_help_shows_each_default_and_env_var(parser: object, settings: tuple[Setting, ...]) -> None:
    helps: dict[str, str] = {}

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    walk(child)
            for flag in action.option_strings:
                helps[flag] = action.help or ""

    walk(parser())  # type: ignore[operator]
    for s in settings:
        assert f"env ${s.env}" in helps[s.flag] and "(default: " in helps[s.flag], s.flag


def _env_reads_at_import(path: Path) -> list[int]:
    """Lines reading os.environ / os.getenv outside any function body (so at import time)."""
    tree = ast.parse(path.read_text())
    lines: list[int] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_function = True
        if not in_function and isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            lines.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(tree, False)
    return lines


def test_no_environment_variable_is_read_at_import() -> None:
    files = [*(ROOT / "tensorgrid").rglob("*.py"), *(ROOT / "node").rglob("*.py"), ROOT / "coordinator" / "main.py"]
    found = {str(f.relative_to(ROOT)): lines for f in files if (lines := _env_reads_at_import(f))}
    assert found == {}


def test_the_sandbox_zygote_setting_is_shared_by_both_daemons(capsys: pytest.CaptureFixture[str]) -> None:
    """--sandbox-zygote / $TENSORGRID_SANDBOX_ZYGOTE: auto by default, off (or its aliases) or an
    absolute socket path; anything else is a usage error naming the variable."""
    run = ["run", "--coordinator", "c:1"]
    assert node_main.parse_args(run, env={}).sandbox_zygote == "auto"
    assert coordinator_main.parse_args(["run"], env={}).sandbox_zygote == "auto"
    env = {"TENSORGRID_SANDBOX_ZYGOTE": "/run/tg/sock"}
    assert node_main.parse_args(run, env=env).sandbox_zygote == "/run/tg/sock"
    assert coordinator_main.parse_args(["run", "--sandbox-zygote", "EXEC"], env=env).sandbox_zygote == "exec"
    with pytest.raises(SystemExit) as exit_:
        node_main.parse_args(run, env={"TENSORGRID_SANDBOX_ZYGOTE": "relative/sock"})
    assert exit_.value.code == 2 and "$TENSORGRID_SANDBOX_ZYGOTE='relative/sock'" in capsys.readouterr().err
