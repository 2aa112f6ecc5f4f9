"""tensorgrid.logs: JSON lines that stay one record each, whatever a message or an extra holds."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tensorgrid import config
from tensorgrid.logs import JsonFormatter, formatter, setup_logging


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tensorgrid.test.logs")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.handlers.clear()


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_a_record_is_one_line_with_time_level_logger_and_message(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.warning('task %s failed: "quoted"\nsecond line\r\n{"level": "forged"}', "abc")
    (record,) = _records(stream)  # the newlines did not split it, nor forge a second record
    assert record["msg"] == 'task abc failed: "quoted"\nsecond line\r\n{"level": "forged"}'
    assert record["level"] == "WARNING" and record["logger"] == "tensorgrid.test.logs"
    ts = str(record["ts"])
    assert ts.endswith("Z") and datetime.fromisoformat(ts).utcoffset() is not None
    assert stream.getvalue().isascii()


def test_an_exception_travels_as_its_traceback_text(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("it broke")
    (record,) = _records(stream)
    assert record["msg"] == "it broke"
    assert "Traceback" in str(record["exc_info"]) and "ValueError: bad\nvalue" in str(record["exc_info"])


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class _Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_extras_are_fields_and_what_json_cannot_hold_is_repr(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    loop: list[object] = []
    loop.append(loop)
    logger.info(
        "with extras",
        extra={
            "tasks": 3,
            "shape": [2, 4],
            "labels": {"kind": "noop"},
            "obj": _Opaque(),
            "raw": b"\x00\xff",
            "nan": float("nan"),
            "loop": loop,
            "hostile": _Hostile(),
            "level": "not the level",  # a field of the record's own: kept under another name
        },
    )
    (record,) = _records(stream)
    assert record["tasks"] == 3 and record["shape"] == [2, 4] and record["labels"] == {"kind": "noop"}
    assert record["obj"] == "<opaque>" and record["raw"] == repr(b"\x00\xff") and record["nan"] == "nan"
    assert record["loop"] == "[[...]]"
    assert record["hostile"] == "<unrepresentable _Hostile>"
    assert record["level"] == "INFO" and record["extra_level"] == "not the level"
    assert "args" not in record and "pathname" not in record  # the record's own attributes are not extras


def test_a_message_that_cannot_be_formatted_is_still_a_record() -> None:
    bad = logging.LogRecord("tensorgrid.x", logging.INFO, __file__, 1, "%d tasks", ("many",), None)
    record = json.loads(JsonFormatter().format(bad))
    assert "%d tasks" in str(record["msg"]) and "many" in str(record["msg"])


def test_setup_logging_chooses_the_format_and_refuses_others(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger("tensorgrid")
    saved = root.handlers[:], root.level, root.propagate
    try:
        log = setup_logging(False, "tensorgrid.test", "json")
        log.info("hello")
        log.debug("not shown")
        lines = capsys.readouterr().err.splitlines()
        assert [json.loads(line)["msg"] for line in lines] == ["hello"]
        setup_logging(False, "tensorgrid.test", "text").info("plain")
        assert capsys.readouterr().err.rstrip().endswith("INFO tensorgrid.test: plain")
        with pytest.raises(ValueError, match="unknown log format"):
            formatter("xml")
    finally:
        root.handlers[:], root.level, root.propagate = saved


def test_each_program_has_its_own_log_format_setting() -> None:
    from coordinator import settings as coordinator_settings
    from node import config as node_config
    from tensorgrid import cli

    assert coordinator_settings.LOG_FORMAT.env == "TENSORGRID_COORDINATOR_LOG_FORMAT"
    assert node_config.LOG_FORMAT.env == "TENSORGRID_NODE_LOG_FORMAT"
    assert config.LOG_FORMAT in cli.SETTINGS and node_config.LOG_FORMAT in node_config.GLOBAL
    for setting in (config.LOG_FORMAT, coordinator_settings.LOG_FORMAT, node_config.LOG_FORMAT):
        assert setting.default == "text" and tuple(setting.choices or ()) == ("text", "json")


@pytest.mark.parametrize("entry", ["coordinator.main", "node.main"])
def test_sigusr1_writes_every_threads_stack_into_a_daemons_log(entry: str) -> None:
    """`kill -USR1` on a daemon that seems stuck: its threads' stacks go to stderr (its log)
    and it goes on (README, Logs). Its entry point arms this, whatever the command."""
    script = (
        "import os, signal, threading\n"
        f"from {entry} import main\n"
        "main(['config', 'show'])\n"
        "threading.Thread(target=threading.Event().wait, args=(30,), name='waiter', daemon=True).start()\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "print('still running')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("still running")
    assert "Current thread" in done.stderr and done.stderr.count("Thread 0x") >= 1  # the waiter's too
    assert "in wait" in done.stderr
