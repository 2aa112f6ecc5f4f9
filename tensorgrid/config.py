"""Settings of the three programs (tensorgrid, tensorgrid-node, tensorgrid-coordinator).

Each setting is one Setting: its flag, its environment variable, its key in a daemon's TOML
file (the flag's name with underscores) and its default, written once. A value comes from the
flag if given, else from the environment variable if set and non-empty, else from the
`--config` file if it has the key, else from the default: that order lives in parse_args and
nowhere else, which also records where each value came from (`config show` prints it). The
environment and the file are read when a program parses its command line, never at import;
`--help` shows each default and variable. A bad value anywhere is a usage error (exit 2)
naming the flag, the variable or the file and key.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tensorgrid.errors import TensorGridError
from tensorgrid.owner import pid as owner_pid

Env = Mapping[str, str]
HOME_ENV = "TENSORGRID_HOME"
Origin = Literal["flag", "env", "file", "default"]
ORIGINS = "origins"  # the parsed namespace's attribute: {dest: Origin} of every setting its command has


class ConfigError(ValueError):
    """A setting's value (from a variable or the file) or the file itself is wrong: a usage error."""


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


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """A duration setting: "90m", "12h", "7d", "30s", "500ms" (a bare number is seconds) → milliseconds."""
    raw = text.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h", "d") if raw.endswith(u)), "")
    try:
        value = float(raw[: len(raw) - len(unit)] if unit else raw)
    except ValueError:
        raise TensorGridError(f"not a duration: {text!r} (write e.g. 12h, 7d, 90m)") from None
    if value <= 0:
        raise TensorGridError(f"a duration must be positive, got {text!r}")
    return int(value * _UNITS_MS[unit or "s"])


@dataclass(frozen=True)
class Setting:
    """One option of a program. default None means none (required=True: the flag, the variable or
    the daemon's file must give it)."""

    flag: str
    env: str
    default: Any = None
    type: Callable[[str], Any] = str
    help: str = ""
    choices: Sequence[str] | None = None
    required: bool = False
    metavar: str | None = None
    # how `config show` masks it: "password" (a URL's password and query), "path" (a URL's
    # password, path and query: where RPC providers put API keys), or "" (a plain value)
    secret: Literal["", "password", "path"] = ""
    aliases: tuple[str, ...] = ()  # more option strings, e.g. ("-v",)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def key(self) -> str:
        """The setting's key in a TOML file: the flag without dashes in front, underscores inside."""
        return self.dest

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the flag; it parses to None when not given, and parse_args fills it in."""
        shown = self.default.shown if isinstance(self.default, Computed) else self.default
        shown = "required" if self.required else "none" if shown in (None, "") else shown
        text = f"{self.help} (default: {shown}; env ${self.env})".strip().replace("%", "%%")
        names = (self.flag, *self.aliases)
        if self.type is switch:  # a flag with no value: given means on
            parser.add_argument(*names, dest=self.dest, action="store_const", const=True, default=None, help=text)
            return
        parser.add_argument(
            *names, dest=self.dest, type=self.type, choices=self.choices, default=None, metavar=self.metavar, help=text
        )

    def resolve(self, env: Env, file: ConfigFile | None = None) -> tuple[Any, Origin]:
        """The value when the flag is not given, and where it came from: the environment
        variable's, else the file's, else the default."""
        raw = env.get(self.env, "")
        if raw:
            try:
                value = self.type(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"${self.env}={raw!r} is not a valid value for {self.flag}") from None
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"${self.env}={raw!r}: {self.flag} must be one of {', '.join(self.choices)}")
            return value, "env"
        if file is not None and self.key in file.values:
            return file.value_of(self), "file"
        return (self.default.compute(env) if isinstance(self.default, Computed) else self.default), "default"

    def from_file(self, raw: Any, base: Path) -> Any:
        """A TOML value as this setting's: on/off settings take true/false, whole numbers take
        integers, other numbers integers or floats, the rest strings (paths relative to `base`,
        the file's directory). Raises ValueError saying what was expected."""
        if self.type is switch:
            value = _expect(raw, bool, "true or false")
        elif self.type is int:
            value = _expect(raw, int, "a whole number")
        elif self.type is float:
            value = float(_expect(raw, (int, float), "a number"))
        else:
            value = self.type(_expect(raw, str, "a string"))
            if isinstance(value, Path):
                value = base / value.expanduser()
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return value


_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}


def _expect(raw: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(raw, bool) and kind is not bool or not isinstance(raw, kind):
        # the type only, not the value: it may be a secret
        raise ValueError(f"must be {what}, not a TOML {_TOML_TYPES.get(type(raw), type(raw).__name__)}")
    return raw


@dataclass(frozen=True)
class ConfigFile:
    """A daemon's TOML file: top-level keys, each a setting's key, checked when loaded."""

    path: Path
    values: Mapping[str, Any]  # key -> the setting's value, already converted

    @classmethod
    def load(cls, path: Path, settings: Sequence[Setting]) -> ConfigFile:
        """Read and check the file: every key known, every value of its setting's type."""
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read the config file {path}: {e.strerror or e}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        by_key = {s.key: s for s in settings}
        values: dict[str, Any] = {}
        for key, raw in data.items():
            setting = by_key.get(key)
            if setting is None:
                near = difflib.get_close_matches(key.replace("-", "_"), by_key, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(sorted(by_key))}"
                raise ConfigError(f"{path}: unknown key {key!r}{hint}")
            try:
                values[key] = setting.from_file(raw, path.absolute().parent)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{path}: {key} {e}") from None
        return cls(path, values)

    def value_of(self, setting: Setting) -> Any:
        return self.values[setting.key]


def given(pairs: Any) -> dict[str, Any]:
    """The (name, value) pairs whose value was given (not None): a command's options left out
    stay out of the spec they build, so the spec's defaults apply."""
    return {name: value for name, value in pairs if value is not None}


def add_settings(parser: argparse.ArgumentParser, *settings: Setting) -> argparse.ArgumentParser:
    for setting in settings:
        setting.add_to(parser)
    return parser


def config_setting(env: str, program: str) -> Setting:
    """A daemon's --config option: the TOML file its other settings may come from."""
    return Setting(
        "--config",
        env,
        None,
        type=Path,
        help=f'TOML file of {program}\'s settings, keyed like the flags (data_dir = "/srv/x" for '
        "--data-dir /srv/x; relative paths from the file's directory); a flag or a variable beats it",
        metavar="FILE",
    )


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    settings: Sequence[Setting],
    env: Env | None = None,
    config: Setting | None = None,
) -> argparse.Namespace:
    """Parse argv, then fill each setting the chosen command has but was not given: from the
    environment, else from the `config` file (when the program has one and it is named), else
    the default. `ns.origins` records where each came from. With `ns.show_config` set (a
    `config show` command) a required setting may stay unset: showing that is the point."""
    env = os.environ if env is None else env
    ns = parser.parse_args(argv)
    origins: dict[str, Origin] = {}
    try:
        file = _config_file(ns, settings, env, config, origins)
    except ConfigError as e:
        parser.error(str(e))
    for setting in settings:
        if not hasattr(ns, setting.dest):  # not an option of this command
            continue
        if getattr(ns, setting.dest) is not None:
            origins[setting.dest] = "flag"
            continue
        try:
            value, origins[setting.dest] = setting.resolve(env, file)
        except ConfigError as e:
            parser.error(str(e))
        if value is None and setting.required and not getattr(ns, "show_config", False):
            also = f" or {setting.key} in the --config file" if file is not None else ""
            parser.error(f"{setting.flag} is required (or set ${setting.env}{also})")
        setattr(ns, setting.dest, value)
    setattr(ns, ORIGINS, origins)
    return ns


def unknown_variables(prefix: str, settings: Sequence[Setting], env: Env | None = None) -> list[str]:
    """Variables named like a program's own (`prefix`) that are no setting of it: a misspelt one
    would otherwise be ignored without a word."""
    env = os.environ if env is None else env
    known = {s.env for s in settings}
    return sorted(name for name in env if name.startswith(prefix) and name not in known)


def _config_file(
    ns: argparse.Namespace, settings: Sequence[Setting], env: Env, config: Setting | None, origins: dict[str, Origin]
) -> ConfigFile | None:
    """The --config file (the flag, else its variable), loaded and checked; None without one."""
    if config is None or not hasattr(ns, config.dest):
        return None
    if ns.config is not None:
        origins[config.dest] = "flag"
    else:
        ns.config, origins[config.dest] = config.resolve(env)
    return None if ns.config is None else ConfigFile.load(Path(ns.config), settings)


# Where a coordinator listens unless told otherwise, and so where the tools look for one.
LOCAL_COORDINATOR = "127.0.0.1:7070"

# Settings more than one program has.
COORDINATOR = Setting(
    "--coordinator",
    "TENSORGRID_COORDINATOR",
    LOCAL_COORDINATOR,
    help="HOST:PORT of the coordinator, or of its replicas in order (a:7070,b:7070: the first that answers)",
    metavar="HOST:PORT[,…]",
)
CHAIN_RPC = Setting(
    "--chain-rpc",
    "TENSORGRID_CHAIN_RPC",
    "",
    help="JSON-RPC URL of the settlement chain; none: no chain",
    metavar="URL",
    secret="path",
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
LOG_FORMAT = Setting(
    "--log-format",
    "TENSORGRID_LOG_FORMAT",
    "text",
    choices=("text", "json"),
    help="how log lines look on stderr: text for people, json for log shippers (one object per line: "
    "ts, level, logger, msg, exc_info and a call's extra fields)",
)


def zygote(raw: str) -> str:
    """--sandbox-zygote's value: auto, off (or exec, 0, no, false) or a socket's absolute path."""
    value = raw.strip()
    if value.lower() in ("auto", "off", "exec", "0", "no", "false"):
        return value.lower()
    if not Path(value).is_absolute():
        raise ValueError(f"neither auto, off nor an absolute socket path: {raw!r}")
    return value


SANDBOX_ZYGOTE = Setting(
    "--sandbox-zygote",
    "TENSORGRID_SANDBOX_ZYGOTE",
    "auto",
    type=zygote,
    help="how sandboxed children start: auto (forked from this daemon's own zygote, which imports torch "
    "once), the socket of a zygote the host's daemons share (`tensorgrid devnet up` starts one), or off "
    "(each child an interpreter of its own, importing torch itself)",
    metavar="auto|off|PATH",
)


OWNER = Setting(
    "--owner",
    "TENSORGRID_OWNER",
    0,
    type=owner_pid,
    help="end when process PID does (SIGTERM, then SIGKILL if still running 10 s later): for a daemon "
    "started by and for one program (tests, the demo); never for one meant to outlive who started it. "
    "0: none",
    metavar="PID",
)


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
