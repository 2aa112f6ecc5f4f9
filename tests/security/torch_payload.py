"""A test-only sandbox entry point that imports torch in prepare(), as the node's worker and
the coordinator's referee do; it answers with torch's thread count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorgrid.sandbox import serve_once


def prepare() -> None:
    import torch  # noqa: F401


def _threads(request: dict[str, Any], scratch: Path) -> dict[str, Any]:
    import torch

    return {"threads": torch.get_num_threads()}


def main() -> None:
    serve_once(_threads)
