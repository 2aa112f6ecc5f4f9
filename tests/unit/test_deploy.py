"""deploy/: the systemd units pass `systemd-analyze verify` (and its offline security review), and
every command in the units, the Dockerfiles and the compose file is one its program accepts: each
is parsed by that program's own argument parser, so a renamed or removed flag fails here.

The images cannot be built here (no container daemon, no base images); the wheel they install
runs the units' own command lines in tests/integration/test_wheel.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from coordinator.main import build_parser as coordinator_parser
from node.main import build_parser as node_parser
from tensorgrid.chain.anvil import anvil_binary
from tensorgrid.chain.deploy import build_parser as deploy_parser
from tensorgrid.chain.errors import ChainError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
INSTALLED_BIN = "/opt/tensorgrid/bin/"  # where the units expect the venv (README, "Service files")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Each `Key=` of a unit file with all its values, in order (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exec_start(path: Path) -> list[str]:
    (line,) = unit_settings(path)["ExecStart"]
    return shlex.split(line)


def expand(argv: list[str], credentials: Path, state: Path, bin_dir: Path) -> list[str]:
    """A unit's command as systemd would run it: %d (credentials), %S (state root), the venv."""
    return [
        a.replace("%d", str(credentials)).replace("%S", str(state)).replace(INSTALLED_BIN, f"{bin_dir}/") for a in argv
    ]


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "tensorgrid-node": node_parser,
    "tensorgrid-coordinator": coordinator_parser,
    "python -m tensorgrid.chain.deploy": deploy_parser,  # the compose file's one-shot deployment
}


def strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No abbreviations (argparse takes --password-fil for --password-file): the exact flag or nothing."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                strict(sub)
    return parser


def check_command(argv: list[str], where: str) -> str:
    """Parse `argv` with its program's parser; return the program's name."""
    program = Path(argv[0]).name
    args = argv[1:]
    if argv[:3] == ["python", "-m", "tensorgrid.chain.deploy"]:
        program, args = "python -m tensorgrid.chain.deploy", argv[3:]
    if program == "anvil":
        check_anvil_flags(args, where)
        return program
    assert program in PARSERS, f"{where}: no parser known for {argv[0]}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            strict(PARSERS[program]()).parse_args(args)
        except SystemExit as e:
            pytest.fail(f"{where}: {program} refuses {shlex.join(args)}:\n{err.getvalue()}(exit {e.code})")
    return program


def check_anvil_flags(args: list[str], where: str) -> None:
    try:
        anvil = anvil_binary()
    except ChainError as e:
        pytest.skip(f"anvil's flags not checked: {e}")
    known = set(
        re.findall(r"--[a-z][a-z0-9-]*", subprocess.run([str(anvil), "--help"], capture_output=True, text=True).stdout)
    )
    unknown = [a for a in args if a.startswith("--") and a not in known]
    assert unknown == [], f"{where}: anvil does not know {unknown}"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze(unit: Path, tmp_path: Path) -> None:
    analyze = SYSTEMD_ANALYZE
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd; deploy/test.sh does)")
    # The one change: ExecStart names this checkout's venv, as the unit names /opt/tensorgrid's
    # (verify checks that the program exists and is executable).
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_BIN, f"{Path(sys.executable).parent}/"))
    verify = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, ""), verify.stdout + verify.stderr
    # Sandboxing kept: systemd's own exposure score (0 safest … 10) stays "OK" (≤ 5.0).
    review = [analyze, "security", "--offline=true", "--threshold=50", str(copy)]
    security = subprocess.run(review, capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout[-600:]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_restarts_sandboxes_and_takes_secrets_as_credentials(unit: Path) -> None:
    settings = unit_settings(unit)
    assert settings["Restart"] == ["on-failure"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes")):
        assert settings.get(key) == [value], f"{unit.name}: {key}={value}"
    assert settings["DynamicUser"] == ["yes"] and settings["StateDirectory"]
    credentials = {c.split(":", 1)[0] for c in settings["LoadCredential"]}
    used = {m for a in exec_start(unit) for m in re.findall(r"%d/([\w.-]+)", a)}
    assert used <= credentials, f"{unit.name}: ExecStart reads credentials it does not load: {used - credentials}"
    assert not [a for a in exec_start(unit) if "PASSWORD" in a], "no secret on a command line or in the environment"
    assert exec_start(unit)[0].startswith(INSTALLED_BIN)
    assert check_command(exec_start(unit), unit.name) == unit.name.removesuffix(".service")


def dockerfile_command(path: Path) -> tuple[list[str], list[str]]:
    """(ENTRYPOINT, CMD) of the final stage, both in exec (JSON) form: the daemon is PID 1 and
    gets docker's SIGTERM itself (a shell form would take it and the daemon would not drain)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        word, _, rest = line.partition(" ")
        if word in ("ENTRYPOINT", "CMD"):
            assert rest.startswith("["), f"{path.name}: {word} in shell form"
            found[word] = json.loads(rest)
    return found["ENTRYPOINT"], found["CMD"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_command_is_accepted(dockerfile: Path) -> None:
    entrypoint, cmd = dockerfile_command(dockerfile)
    check_command(entrypoint + cmd, dockerfile.name)
    text = dockerfile.read_text()
    assert "\nUSER " in text, f"{dockerfile.name}: the daemon must not run as root"
    assert "-c /tmp/requirements.lock" in text, f"{dockerfile.name}: install at the lock's versions"


def test_dockerfiles_are_the_three_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["coordinator.Dockerfile", "node-cpu.Dockerfile", "node-cuda.Dockerfile"]


def test_every_compose_command_is_accepted_and_its_secrets_are_mounted() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "anvil", "coordinator", "node-cpu", "node-cuda"} <= set(services)
    checked = []
    for name, service in services.items():
        if "command" not in service:
            continue
        entrypoint = service.get("entrypoint")
        if entrypoint is None:
            entrypoint, _ = dockerfile_command(ROOT / service["build"]["dockerfile"])
        checked.append(check_command(entrypoint + service["command"], f"compose service {name}"))
        text = json.dumps(service)
        mounted = set(service.get("secrets", []))
        assert set(re.findall(r"/run/secrets/([\w.-]+)", text)) <= mounted, f"{name}: a secret it does not mount"
        assert mounted <= set(compose["secrets"])
    assert sorted(checked) == sorted(
        ["anvil", "python -m tensorgrid.chain.deploy", "tensorgrid-coordinator", "tensorgrid-node", "tensorgrid-node"]
    )


@pytest.mark.parametrize("flag", ["--no-such-flag", "--data-di"])
def test_a_refused_flag_fails_the_check(flag: str) -> None:
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        check_command(["/opt/tensorgrid/bin/tensorgrid-node", "run", flag, "/x"], "example")
