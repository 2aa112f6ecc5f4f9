"""The code stays lint-clean, formatted and type-clean (generated code excluded by pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    """Every Python file and every Python example in the docs is as `ruff format` writes it."""
    result = run("ruff", "format", "--check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_is_clean() -> None:
    result = run("mypy", "coordinator", "node", "tensorgrid", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


# What the set-up installs or the tools generate on the fly: never tracked, always ignored.
# (Compiled contract artifacts and the generated protobuf modules are committed on purpose.)
INSTALLED = ("node_modules/", ".venv/", "__pycache__/", ".egg-info/", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/")


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"git {' '.join(args)} failed (the tests run from a git checkout): {result.stderr}"
    return result.stdout


def test_nothing_installed_or_generated_is_tracked() -> None:
    tracked = [p for p in git("ls-files").splitlines() if any(part in f"/{p}" for part in INSTALLED)]
    assert tracked == [], f"installed or generated files are tracked: {tracked[:10]} (git rm -r --cached them)"


def test_what_the_setup_creates_is_ignored() -> None:
    paths = [
        ".venv/bin/python",
        "contracts/node_modules/solc/index.js",
        "tests/js/node_modules/ethers/package.json",
        "tensorgrid/__pycache__/x.pyc",
        "var/x",
    ]
    ignored = git("check-ignore", "--no-index", *paths).splitlines()
    assert sorted(ignored) == sorted(paths), f"not ignored: {sorted(set(paths) - set(ignored))}"
