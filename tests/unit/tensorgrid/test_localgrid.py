"""A local grid's processes take their settings from its flags, not from the caller's shell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tensorgrid.localgrid import LocalGrid

SHOW = "import os; print(sorted(k for k in os.environ if k.startswith('TENSORGRID_')))"


def test_exported_settings_do_not_leak_into_local_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TENSORGRID_CHAIN_RPC", "TENSORGRID_COORDINATOR", "TENSORGRID_NODE_SLOTS", "TENSORGRID_HOME"):
        monkeypatch.setenv(var, "x")
    # the suite's zygote socket (tests/conftest.py): a host's setting, which its processes do inherit
    monkeypatch.delenv("TENSORGRID_SANDBOX_ZYGOTE", raising=False)
    with LocalGrid(tmp_path) as grid:
        proc = grid._spawn("show", [sys.executable, "-c", SHOW], env={"TENSORGRID_NODE_THREADS": "1"})
        proc.popen.wait(30)
    assert proc.log_tail().strip() == "['TENSORGRID_HOME', 'TENSORGRID_NODE_THREADS']"


def test_a_restarted_process_runs_under_its_prefix_again(tmp_path: Path) -> None:
    show = [sys.executable, "-c", "import os; print(os.environ['VIA'])"]
    with LocalGrid(tmp_path) as grid:
        proc = grid._spawn("show", show, prefix=("env", "VIA=prefix"))  # as `ip netns exec NAME` would
        proc.popen.wait(30)
        again = grid.restart(proc)
        again.popen.wait(30)
    assert again.popen.args == ["env", "VIA=prefix", *show] and again.prefix == ("env", "VIA=prefix")
    assert again.log_tail().split() == ["prefix", "prefix"]  # one log, both runs
