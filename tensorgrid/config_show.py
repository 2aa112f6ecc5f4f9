"""`config show` of the daemons: each setting's effective value, where it came from, secrets masked.

The text form is TOML (values a daemon's --config file accepts), each line commented with the
value's origin and its variable, so an operator can start a file from it; `--json` gives the
same as one object for scripts. Masked values are marked, never the secret's text."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tensorgrid.config import ORIGINS, Setting

MASK = "***"


def add_show_parser(sub: Any, settings: Sequence[Setting], program: str) -> argparse.ArgumentParser:
    """`config show` under `sub` (a subparsers object) with `settings`, so it resolves them as a run would."""
    group = sub.add_parser("config", help=f"{program}'s settings").add_subparsers(dest="config_command", required=True)
    show = group.add_parser(
        "show",
        help="print the effective settings (flag > env > file > default) and where each came from; secrets masked",
    )
    show.add_argument("--json", action="store_true", help="one JSON object instead of TOML lines")
    show.set_defaults(show_config=True)
    for setting in settings:
        setting.add_to(show)
    return show


def mask(setting: Setting, value: Any) -> Any:
    """The value as `config show` prints it: a secret's credentials replaced by ***."""
    if not setting.secret or value in (None, ""):
        return value
    parts = urlsplit(str(value))
    if not (parts.scheme and parts.netloc):
        return MASK  # not a URL: nothing of it is safe to print
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.username is not None:
        password = f":{MASK}" if parts.password is not None else ""
        host = f"{parts.username}{password}@{host}"
    if setting.secret == "password":
        return urlunsplit((parts.scheme, host, parts.path, MASK if parts.query else "", ""))
    # "path": RPC providers carry their API key in the path or the query
    return urlunsplit((parts.scheme, host, f"/{MASK}" if parts.path.strip("/") else parts.path, "", ""))


def effective(ns: argparse.Namespace, settings: Sequence[Setting]) -> dict[str, dict[str, Any]]:
    """key → value (masked, JSON-ready), origin, flag and variable, for each setting the command has."""
    origins = getattr(ns, ORIGINS)
    out: dict[str, dict[str, Any]] = {}
    for setting in settings:
        if setting.dest not in origins:
            continue
        value = mask(setting, getattr(ns, setting.dest))
        out[setting.key] = {
            "value": str(value) if isinstance(value, Path) else value,
            "origin": origins[setting.dest],
            "flag": setting.flag,
            "env": setting.env,
            "masked": bool(setting.secret) and value != getattr(ns, setting.dest),
        }
    return out


def show(
    ns: argparse.Namespace, settings: Sequence[Setting], program: str, config: Setting, notes: Sequence[str] = ()
) -> str:
    """The text `config show` prints: TOML lines, or JSON with --json."""
    table = effective(ns, settings)
    file = None if ns.config is None else str(ns.config)
    if ns.json:
        return json.dumps({"program": program, "config_file": file, "settings": table, "notes": list(notes)}, indent=2)
    origin = getattr(ns, ORIGINS).get(config.dest, "default")
    named = {"flag": config.flag, "env": f"${config.env}"}.get(origin, origin)
    lines = [
        f"# {program}: effective settings (a flag beats its variable, which beats the file, which beats the default)",
        f"# config file: {file} (from {named})" if file else f"# config file: none ({config.flag} or ${config.env})",
        *(f"# {note}" for note in notes),
    ]
    rows = [(_toml_line(key, row["value"]), f"# {row['origin']}, ${row['env']}") for key, row in table.items()]
    width = max(len(left) for left, _ in rows) if rows else 0
    lines += [f"{left:<{width}}  {right}" for left, right in rows]
    return "\n".join(lines)


def _toml_line(key: str, value: Any) -> str:
    if value is None:
        return f"# {key} = (none)"
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"{key} = {value!r}"
    return f"{key} = {json.dumps(str(value), ensure_ascii=False)}"
