"""Every command says which TensorGrid it is: --version on the CLI, the node and the coordinator."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from coordinator.main import build_parser as coordinator_parser
from node.main import build_parser as node_parser
from tensorgrid.cli import build_parser as cli_parser
from tensorgrid.config import version


@pytest.mark.parametrize(
    ("build", "name"),
    [(cli_parser, "tensorgrid"), (node_parser, "tensorgrid-node"), (coordinator_parser, "tensorgrid-coordinator")],
)
def test_each_command_has_a_version(build: Callable[[], object], name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build().parse_args(["--version"])  # type: ignore[attr-defined]
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name} {version()}"
    assert version()[0].isdigit()  # the installed package's, not "unknown"
