"""Lending a child one request's files, and taking them back: how a warm child serving many
strangers in turn (the coordinator's referee, a node's task worker) reads only the files of
the request at hand, never every blob of the store they came from.

The child is given one directory it may read and not write (`Loans.path`, in its isolation
from its start); for each request the parent hard-links the request's files into it (copies
them where the store is on another file system), rewrites the request's paths to them
(`rewrite`) and unlinks them once the request is over, however it ended.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tensorgrid.sandbox.policy import Scratch

__all__ = ["Loans", "rewrite"]

log = logging.getLogger("tensorgrid.sandbox")
_warned_copies = False


class Loans:
    """A child's lending directory (a Scratch named lent-*): give `path` to its isolation as
    readable, lend each request's files with `lend`/`lent`, delete it all with `close`."""

    def __init__(self, root: os.PathLike[str] | str | None = None) -> None:
        self._scratch = Scratch(root, prefix="lent-")
        self.path = self._scratch.path

    def lend(self, inputs: Iterable[os.PathLike[str] | str]) -> dict[str, str]:
        """Lend `inputs` for one request: {caller's path: the child's}. Give it to `take_back`
        once the request is over; on a failure (a file gone) nothing stays lent."""
        lent: dict[str, str] = {}
        names: set[str] = set()
        try:
            for source in dict.fromkeys(os.fspath(p) for p in inputs):
                # the file's own name (a blob's is its hash): the same blob lent again has the
                # same path and, linked, the same inode, so the child's caches keyed by path and
                # file identity (loaded programs) still hit
                name = Path(source).name
                dest = self.path / (name if name not in names else f"{len(lent)}-{name}")
                _link_or_copy(source, dest)
                names.add(dest.name)
                lent[source] = str(dest)
        except BaseException:
            self.take_back(lent)
            raise
        return lent

    def take_back(self, lent: Mapping[str, str]) -> None:
        """Unlink what `lend` lent (the store's files stay)."""
        for link in lent.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)

    @contextlib.contextmanager
    def lent(self, inputs: Iterable[os.PathLike[str] | str]) -> Iterator[dict[str, str]]:
        """`lend` for the body of a with-statement, taken back after it however it ends."""
        lent = self.lend(inputs)
        try:
            yield lent
        finally:
            self.take_back(lent)

    def close(self) -> None:
        """Delete the directory and whatever is still lent in it."""
        self._scratch.close()


def _link_or_copy(source: str, dest: Path) -> None:
    global _warned_copies
    try:
        os.link(source, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        if not _warned_copies:  # every request pays a copy, and a copy is a new file each time
            _warned_copies = True
            log.warning("sandbox: %s is on another file system than %s: each request's files are copied", source, dest)
        shutil.copyfile(source, dest)


def rewrite(value: Any, lent: Mapping[str, str]) -> Any:
    """`value` (a request) with every string that is a lent path replaced by where it was lent."""
    if not lent:
        return value
    if isinstance(value, str):
        return lent.get(value, value)
    if isinstance(value, Mapping):
        return {k: rewrite(v, lent) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rewrite(v, lent) for v in value]
    return value
