"""The task worker without torch: node.worker's protocol for the task kinds that need none
(node.worker.LIGHT_KINDS: noop), started as `python -m tensorgrid.sandbox.boot` with this
entry, which has no prepare() (torch's import, seconds of CPU a worker). The executor starts
it for such a task when no worker runs, and replaces it with node.worker when a task that
needs torch comes: a node whose tasks never need torch never imports it."""

from __future__ import annotations

from node import worker

__all__ = ["main"]


def main() -> None:
    """Entry point of the child process."""
    worker.run(light=True)


if __name__ == "__main__":
    main()
