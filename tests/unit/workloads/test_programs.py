"""Warm programs (tensorgrid.workloads.programs): loaded once per file, reloaded when the file
changes, the least recently used dropped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tensorgrid.workloads.programs import ProgramCache


def _loader(calls: list[str]) -> Any:
    def load(path: str | os.PathLike[str], device: Any = "cpu") -> object:
        calls.append(Path(path).name)
        return object()

    return load


def test_a_program_loads_once_and_a_replaced_file_loads_again(tmp_path: Path) -> None:
    calls: list[str] = []
    cache = ProgramCache(_loader(calls))
    model = tmp_path / "m.pt2"
    model.write_bytes(b"one")
    first = cache(model, "cpu")
    assert cache(model, "cpu") is first and calls == ["m.pt2"]
    assert cache.load_seconds > 0
    assert cache(model, "cuda") is not first  # another device is another module
    replaced = tmp_path / "new"
    replaced.write_bytes(b"two")
    os.replace(replaced, model)  # a new file at the same path: never served stale
    assert cache(model, "cpu") is not first and calls == ["m.pt2"] * 3


def test_the_least_recently_used_program_is_dropped(tmp_path: Path) -> None:
    calls: list[str] = []
    cache = ProgramCache(_loader(calls), size=2)
    a, b, c = (tmp_path / name for name in ("a", "b", "c"))
    for path in (a, b, c):
        path.write_bytes(path.name.encode())
    cache(a)
    cache(b)
    cache(a)  # a is now the most recent
    cache(c)  # drops b
    assert len(cache) == 2
    cache(a)
    cache(b)
    assert calls == ["a", "b", "c", "b"]
