"""Settings of the three programs (tensorgrid, tensorgrid-node, tensorgrid-coordinator).

Each setting is one Setting: its flag, its environment variable and its default, written
once. A value comes from the flag if given, else from the environment variable if set and
non-empty, else from the default. The environment is read when a program parses its
command line (parse_args), never at import; `--help` shows each default and variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Env = Mapping[str, str]
HOME_ENV = "TENSORGRID_HOME"


@dataclass(frozen=True)
class Computed:
    """A default that depends on the environment (a path under $TENSORGRID_HOME), and how --help shows it."""

    compute: Callable[[Env], Any]
    shown: str


def home(env: Env) -> Path:
    """Where keys and node data live by default: $TENSORGRID_HOME, else ~/.tensorgrid."""
    return Path(env.get(HOME_ENV) or Path.home() / ".tensorgrid")


def under_home(name: str) -> Computed:
    return Computed(lambda env: home(env) / name, f"${HOME_ENV}/{name}, ~/.tensorgrid/{name} without it")


def switch(raw: str) -> bool:
    """An on/off setting's variable: 1/true/yes/on or 0/false/no/off."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not on/off: {raw!r}")


@dataclass(frozen=True)
class Setting:
    """One option of a program. default None means none (required=True: the flag or variable must be given)."""

    flag: str
    env: str
    default: Any = None
    type: Callable[[str], Any] = str
    help: str = ""
    choices: Sequence[str] | None = None
    required: bool = False
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the flag; it parses to None when not given, and parse_args fills it in."""
        shown = self.default.shown if isinstance(self.default, Computed) else self.default
        shown = "required" if self.required else "none" if shown in (None, "") else shown
        text = f"{self.help} (default: {shown}; env ${self.env})".strip().replace("%", "%%")
        if self.type is switch:  # a flag with no value: given means on
            parser.add_argument(self.flag, action="store_const", const=True, default=None, help=text)
            return
        parser.add_argument(
            self.flag, type=self.type, choices=self.choices, default=None, metavar=self.metavar, help=text
        )

    def resolve(self, env: Env) -> Any:
        """The value when the flag is not given: the environment variable's, else the default."""
        raw = env.get(self.env, "")
        if raw:
            try:
                value = self.type(raw)
            except (TypeError, ValueError):
                raise ValueError(f"${self.env}={raw!r} is not a valid value for {self.flag}") from None
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"${self.env}={raw!r}: {self.flag} must be one of {', '.join(self.choices)}")
            return value
        return self.default.compute(env) if isinstance(self.default, Computed) else self.default


def given(pairs: Any) -> dict[str, Any]:
    """The (name, value) pairs whose value was given (not None): a command's options left out
    stay out of the spec they build, so the spec's defaults apply."""
    return {name: value for name, value in pairs if value is not None}


def add_settings(parser: argparse.ArgumentParser, *settings: Setting) -> argparse.ArgumentParser:
    for setting in settings:
        setting.add_to(parser)
    return parser


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, settings: Sequence[Setting], env: Env | None = None
) -> argparse.Namespace:
    """Parse argv, then fill each setting the chosen command has but was not given: env, then default."""
    env = os.environ if env is None else env
    ns = parser.parse_args(argv)
    for setting in settings:
        if getattr(ns, setting.dest, False) is not None:  # given, or not an option of this command
            continue
        try:
            value = setting.resolve(env)
        except ValueError as e:
            parser.error(str(e))
        if value is None and setting.required:
            parser.error(f"{setting.flag} is required (or set ${setting.env})")
        setattr(ns, setting.dest, value)
    return ns


# Where a coordinator listens unless told otherwise, and so where the tools look for one.
LOCAL_COORDINATOR = "127.0.0.1:7070"

# Settings more than one program has.
COORDINATOR = Setting(
    "--coordinator",
    "TENSORGRID_COORDINATOR",
    LOCAL_COORDINATOR,
    help="HOST:PORT of the coordinator",
    metavar="HOST:PORT",
)
CHAIN_RPC = Setting(
    "--chain-rpc",
    "TENSORGRID_CHAIN_RPC",
    "",
    help="JSON-RPC URL of the settlement chain; none: no chain",
    metavar="URL",
)
DEPLOYMENT = Setting(
    "--deployment",
    "TENSORGRID_DEPLOYMENT",
    None,
    type=Path,
    help="the contracts' deployments file (with --chain-rpc)",
    metavar="FILE",
)
CA_CERT = Setting(
    "--ca-cert",
    "TENSORGRID_CA_CERT",
    None,
    type=Path,
    help="PEM certificate(s) the coordinator's TLS certificate must chain to; none: the system's roots",
    metavar="FILE",
)
INSECURE = Setting(
    "--insecure",
    "TENSORGRID_INSECURE",
    False,
    type=switch,
    help="plain text, no TLS, to any address (without it plain text is used only to a loopback "
    "coordinator given no --ca-cert, and TLS everywhere else)",
)
CLIENT_TLS = (CA_CERT, INSECURE)


def version() -> str:
    """The installed TensorGrid's version (pyproject.toml's, as pip recorded it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tensorgrid")
    except PackageNotFoundError:
        return "unknown (not installed: run from a source tree)"


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--version on a command: its name and TensorGrid's version."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser
