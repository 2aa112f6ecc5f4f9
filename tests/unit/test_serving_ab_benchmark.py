"""benchmarks.serving_ab: each grid runs the code of its own tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.serving_ab import running_from


def _tree(root: Path, name: str) -> Path:
    tree = root / name
    tree.mkdir()
    (tree / "tg_which_tree.py").write_text(f"print({name!r})\n")
    return tree


def test_a_process_started_from_the_base_tree_imports_the_base_trees_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the grids' processes start (`python -m …`, whose working directory comes first on
    sys.path): run from the head checkout, the base grid imported the head's code."""
    head, base = _tree(tmp_path, "head"), _tree(tmp_path, "base")
    monkeypatch.chdir(head)
    monkeypatch.setenv("PYTHONPATH", str(head))
    with running_from(base):
        which = subprocess.run([sys.executable, "-m", "tg_which_tree"], capture_output=True, text=True, check=True)
    assert which.stdout.strip() == "base"
    assert Path.cwd() == head and os.environ["PYTHONPATH"] == str(head)  # as it was
