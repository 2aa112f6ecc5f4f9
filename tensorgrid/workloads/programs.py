"""Loaded programs kept warm across requests, in the process that runs them.

Loading a program (vetting its graph, torch.export.load, moving its weights) costs seconds for
a real model: a node's worker and the coordinator's sandboxed referee both run the same
program many times in a row (a job's shards, its checks, the rulings on them), so each keeps
the last few loaded. Only processes that run strangers' programs use this (they are sandboxed);
an inference program cannot change its own state (graphcheck refuses writes to parameters and
buffers), so a warm program answers a row as a fresh one would.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["PROGRAM_CACHE_SIZE", "ProgramCache", "warm_imports"]

PROGRAM_CACHE_SIZE = 2


def warm_imports() -> None:
    """Import what loading a program pulls in on its first call (torch.export's serializer and
    unlifting, torch._dynamo, sympy, networkx: measured 2.3 s of a 3.6 s first load of a
    22M-parameter encoder on 2 cores), so a warm process pays it before its first request
    rather than during it. Trusted code only: nothing here reads a program."""
    import sympy  # noqa: F401
    import torch._export.serde.serialize  # noqa: F401
    import torch.export._trace  # noqa: F401
    import torch.export._unlift  # noqa: F401
    import torch.export.pt2_archive._package  # noqa: F401


class ProgramCache:
    """LRU of loaded programs keyed by (path, device, file identity).

    `load_seconds` adds up the time spent loading (misses), so a caller can tell how much of a
    request went to loading its program rather than running it; `load_cpu_seconds` the CPU time."""

    def __init__(self, load: Callable[..., Any], size: int = PROGRAM_CACHE_SIZE) -> None:
        self._load = load
        self._size = size
        self._items: OrderedDict[tuple[object, ...], Any] = OrderedDict()
        self.load_seconds = 0.0
        self.load_cpu_seconds = 0.0

    def __call__(self, path: str | os.PathLike[str], device: Any = "cpu", **kwargs: Any) -> Any:
        st = os.stat(path)
        # File identity is in the key so a replaced file at the same path is never served stale.
        # Not the mtime: the node's blob cache touches files to track use, and blobs are
        # immutable (a new blob is a new file, so a new inode).
        key = (os.fspath(path), str(device), st.st_dev, st.st_ino, st.st_size, tuple(sorted(kwargs.items())))
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        started, cpu = time.perf_counter(), time.process_time()
        module = self._load(path, device, **kwargs)
        self.load_seconds += time.perf_counter() - started
        self.load_cpu_seconds += time.process_time() - cpu
        self._items[key] = module
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return module

    def __len__(self) -> int:
        return len(self._items)
