"""A task worker's files for one task only: what keeps a node's warm worker, which runs the
tasks of many submitters in turn, from reading the blobs of the others.

Each worker (node.executor with lend=True) gets two directories of its own, fixed in its
isolation when it starts and nothing else of the node's: lent-* it may read and not write,
where each task's files (program, input, the further blobs its settings name) are hard-linked
for that task (tensorgrid.sandbox.lending), and out-* it may write, where the task writes its
output (and a training task its checkpoints). After the task, however it ended, the links are
unlinked and out-* is emptied; a task that succeeded has its outputs moved first to where the
node wants them. So neither the blob cache nor the work directory (other tasks' outputs,
results waiting to be handed in, checkpoints) is in the worker's reach.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from tensorgrid.sandbox import Isolation, Scratch
from tensorgrid.sandbox.lending import Loans

__all__ = ["TaskDesk"]


class TaskDesk:
    """One worker's lent-* (read only) and out-* (its outputs) directories under `root`."""

    def __init__(self, root: os.PathLike[str] | str | None) -> None:
        self.loans = Loans(root)
        try:
            self.out = Scratch(root, prefix="out-")
            self._dev = os.stat(self.loans.path).st_dev
        except BaseException:
            self.loans.close()
            raise

    def isolation(self, iso: Isolation) -> Isolation:
        """`iso` and these two directories: the only files of the node the worker reaches."""
        return iso.with_paths(readable=[self.loans.path], writable=[self.out.path])

    def links(self, reads: Iterable[str]) -> bool:
        """Whether lending `reads` only links (tens of µs: fine on the event loop), no file being
        on another file system than lent-* (a copy, which can take long: lend off the loop)."""
        try:
            return all(os.stat(p).st_dev == self._dev for p in reads)
        except OSError:
            return True  # lend() raises at once

    def lend(self, reads: Iterable[str], writes: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
        """Lend `reads` for one task and give each of `writes` (files or directories the task
        makes) a place in out-*: ({node's path: the worker's}, same for writes)."""
        lent = self.loans.lend(reads)
        outs = {w: str(self.out.path / Path(w).name) for w in writes}
        return lent, outs

    def take_back(self, lent: Mapping[str, str], outs: Mapping[str, str], keep: bool) -> None:
        """After the task: move its outputs to the node's paths when `keep` (it succeeded), unlink
        what was lent and empty out-*, so the next task finds nothing of this one (a failed
        training task's checkpoints there can take a while to delete)."""
        try:
            for mine, theirs in outs.items() if keep else ():
                if os.path.lexists(theirs):
                    Path(mine).parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(theirs, mine)
        finally:
            self.loans.take_back(lent)
            _empty(self.out.path)

    def close(self) -> None:
        """Delete both directories (the worker is gone)."""
        self.loans.close()
        self.out.close()


def _empty(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
