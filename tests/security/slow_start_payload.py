"""A test-only sandbox entry point that takes a minute to greet, like a child importing torch on a
loaded machine, then answers every request with an empty result."""

from __future__ import annotations

import time

from tensorgrid.sandbox import serve_once


def main() -> None:
    time.sleep(60)
    serve_once(lambda request, scratch: {})
