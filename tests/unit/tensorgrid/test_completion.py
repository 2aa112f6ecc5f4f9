"""`tensorgrid completion bash`: the script completes subcommands, options and choices in a real bash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tensorgrid.cli import build_parser, main
from tensorgrid.completion import script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")


def complete(tmp_path: Path, words: list[str]) -> list[str]:
    """What bash offers for the last of `words` (a partial word, or "" after a space)."""
    path = tmp_path / "tensorgrid.bash"
    path.write_text(script(build_parser(), "bash"))
    quoted = " ".join(f"'{w}'" for w in words)
    harness = (
        f"source {path}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        'cd "$1"; _tensorgrid; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", harness, "bash", str(tmp_path)], capture_output=True, text=True, check=True)
    return sorted(w for w in out.stdout.splitlines() if w)


def test_subcommands_options_and_choices_complete(tmp_path: Path) -> None:
    assert complete(tmp_path, ["tensorgrid", "jo"]) == ["job"]
    assert complete(tmp_path, ["tensorgrid", "job", "submit"]) == ["submit", "submit-generate", "submit-training"]
    assert complete(tmp_path, ["tensorgrid", "job", "submit", "--shard"]) == ["--shard-rows"]
    assert complete(tmp_path, ["tensorgrid", "job", "submit", "--verification", ""]) == [
        "none",
        "replicate",
        "spotcheck",
    ]
    # options belong to their own subcommand: `job list` has --limit, `job submit` has not
    assert complete(tmp_path, ["tensorgrid", "job", "list", "--li"]) == ["--limit"]
    assert complete(tmp_path, ["tensorgrid", "job", "submit", "--li"]) == []
    (tmp_path / "model.pt2").write_bytes(b"")
    assert complete(tmp_path, ["tensorgrid", "job", "submit", "--model", "mod"]) == ["model.pt2"]  # files elsewhere


def test_the_cli_prints_it_and_refuses_an_unknown_shell(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert "bashcompinit" in out and "complete -o filenames -F _tensorgrid tensorgrid" in out
    with pytest.raises(SystemExit) as e:
        main(["completion", "fish"])
    assert e.value.code == 2
