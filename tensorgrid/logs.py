"""Logging setup, called only by entry points: text for people, or one JSON object per line.

`--log-format json` (each program's setting; default text) writes every record as one JSON
object on one line, for log shippers: ts (ISO-8601, UTC, milliseconds), level, logger, msg
(the formatted message), exc_info (the traceback's text, when there is one), and any fields a
call passed with `extra=`. A message's newlines and quotes are escaped by the JSON encoder, so
a line is always one record: text a stranger controls (a job's error, a peer's address) cannot
forge a second record or break the line. An extra that JSON cannot encode is written as its
repr(): a log call never raises for what it carries.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_OWN = ("ts", "level", "logger", "msg", "exc_info")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (ensure_ascii: a line is plain ASCII)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key if key not in _OWN else f"extra_{key}"] = _encodable(value)
        return json.dumps(entry, default=repr)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as e:  # a bad %-format must not lose the record (logging itself would print a traceback)
        return f"{record.msg!r} (unformattable with args {record.args!r}: {e})"


def _encodable(value: Any) -> Any:
    """The value if JSON can encode it as it is, else its repr()."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__name__}>"
    return value


def formatter(fmt: str = "text") -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT, "%H:%M:%S")
    raise ValueError(f"unknown log format {fmt!r}: one of {', '.join(FORMATS)}")


def setup_logging(
    verbose: bool = False, name: str = "tensorgrid", fmt: str = "text", level: int | None = None
) -> logging.Logger:
    """Send the "tensorgrid" loggers to stderr in `fmt` (text or json), at DEBUG when verbose,
    else at `level` (INFO by default); returns the logger `name`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger("tensorgrid")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else (logging.INFO if level is None else level))
    root.propagate = False
    return logging.getLogger(name)


def dump_stacks_on_signal(signum: int = signal.SIGUSR1) -> None:
    """`kill -USR1 PID` writes every thread's Python stack to stderr (the daemon's log), the
    process going on: what a daemon that seems stuck waits on, where no debugger or py-spy may
    attach (a node forbids inspection, a container lacks ptrace). A daemon's entry point calls it."""
    faulthandler.register(signum, all_threads=True)
