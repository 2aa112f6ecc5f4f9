"""The aten operator schemas the graph checks need, read from a committed table, not from torch.

The coordinator vets every program a submitter sends (graphcheck, oppolicy, statecheck) but
never runs one: that happens in its sandboxed child. So the process that holds its key does
not import torch at all; what the checks asked of torch's operator registry lives in
`aten_schemas.txt` beside this module, written from the torch release in `pyproject.toml`:

    <name> <overload> [<argument>:w | <argument>:r]... [<argument>=<default>]...

One line per overload torch resolves as `torch.ops.aten.<name>.<overload>`; `:w` marks an
argument the schema annotates as written in place (`Tensor(a!)`), `:r` one it annotates as
aliased but not written (`Tensor(a)`, views); `=` gives the schema default of any argument named
in GATING_ARGUMENTS (those that switch a gated operator's randomness on: oppolicy.GATED). A
torch upgrade that changes any of it fails tests/unit/workloads/test_oppolicy.py until the
table is written again:

    python -m tensorgrid.workloads.optable --write
"""

from __future__ import annotations

import argparse
import ast
import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["GATING_ARGUMENTS", "TABLE", "Schema", "generate", "schema", "torch_version"]

TABLE = "aten_schemas.txt"
GATING_ARGUMENTS = frozenset({"train", "training", "p", "dropout", "dropout_p"})
_VERSION_PREFIX = "# torch "


@dataclass(frozen=True)
class Schema:
    """What the checks use of one aten overload's schema."""

    aliases: dict[str, bool] = field(default_factory=dict)  # annotated argument -> written in place
    defaults: dict[str, Any] = field(default_factory=dict)  # gating argument -> schema default


@functools.cache
def _table() -> tuple[str, dict[tuple[str, str], Schema]]:
    text = resources.files("tensorgrid.workloads").joinpath(TABLE).read_text(encoding="utf-8")
    return _parse(text)


def _parse(text: str) -> tuple[str, dict[tuple[str, str], Schema]]:
    version, schemas = "", {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(_VERSION_PREFIX):
            version = line[len(_VERSION_PREFIX) :].strip()
        if not line.strip() or line.startswith("#"):
            continue
        name, overload, *rest = line.split(" ")
        aliases, defaults = {}, {}
        for item in rest:
            if "=" in item:
                arg, _, value = item.partition("=")
                defaults[arg] = ast.literal_eval(value)
            elif item[-2:] in (":w", ":r"):
                aliases[item[:-2]] = item[-1] == "w"
            else:
                raise ValueError(f"{TABLE} line {number}: cannot read {item!r}")
        schemas[(name, overload)] = Schema(aliases, defaults)
    if not version:
        raise ValueError(f"{TABLE} names no torch release (a '{_VERSION_PREFIX}<version>' line)")
    return version, schemas


def torch_version() -> str:
    """The torch release the table was written from."""
    return _table()[0]


def schema(name: str, overload: str) -> Schema | None:
    """aten.<name>.<overload>'s schema, or None when torch has no such overload."""
    return _table()[1].get((name, overload))


def generate() -> str:
    """The table's text, read from the installed torch's registry."""
    import torch

    lines = [
        f"{_VERSION_PREFIX}{torch.__version__.split('+')[0]}",
        "# Every aten overload of that release: <name> <overload> [<argument>:w|:r]... [<argument>=<default>]...",
        "# Written by `python -m tensorgrid.workloads.optable --write`; see tensorgrid/workloads/optable.py.",
    ]
    seen: set[tuple[str, str]] = set()
    for s in torch._C._jit_get_all_schemas():
        if not s.name.startswith("aten::"):
            continue
        name, overload = s.name[len("aten::") :], s.overload_name or "default"
        if (name, overload) in seen or not _resolves(torch, name, overload):
            continue
        seen.add((name, overload))
        items = [f"{a.name}:{'w' if a.alias_info.is_write else 'r'}" for a in s.arguments if a.alias_info is not None]
        items += [
            f"{a.name}={a.default_value!r}" for a in s.arguments if a.name in GATING_ARGUMENTS and a.has_default_value()
        ]
        lines.append(" ".join([name, overload, *items]))
    body = sorted(lines[3:])
    return "\n".join(lines[:3] + body) + "\n"


def _resolves(torch: Any, name: str, overload: str) -> bool:
    try:
        op = getattr(getattr(torch.ops.aten, name), overload)
    except (AttributeError, RuntimeError):
        return False
    return isinstance(op, torch._ops.OpOverload)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tensorgrid.workloads.optable",
        description=f"Write (or check) {TABLE}, the aten schemas the graph checks read, from the installed torch.",
    )
    parser.add_argument("--write", action="store_true", help=f"write {TABLE} (default: only say whether it is current)")
    args = parser.parse_args()
    path = Path(__file__).with_name(TABLE)
    text = generate()
    if args.write:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({text.count(chr(10))} lines)")
    elif path.read_text(encoding="utf-8") != text:
        raise SystemExit(f"{path} differs from the installed torch: run with --write")
    else:
        print(f"{path} is current")


if __name__ == "__main__":
    main()
