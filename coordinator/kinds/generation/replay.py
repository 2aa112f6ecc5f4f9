"""The referee's replay of a generation check: the decoding loop over the check's prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tensorgrid.workloads.generation import DecodeSettings, run_generation


def replay_generation(model: Path, module: torch.nn.Module, source: Path, out: Path, settings: dict[str, Any]) -> None:
    """Decode the prompts of `source` with the job's settings on this CPU, into `out`."""
    run_generation(model, source, out, DecodeSettings.from_dict(settings["generation"]), device="cpu", module=module)
