"""Logging setup, called only by entry points."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False, name: str = "tensorgrid") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("tensorgrid")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    return logging.getLogger(name)
