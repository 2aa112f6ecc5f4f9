"""Finished results the coordinator has not taken yet, kept on disk.

A result is kept here, with its signed receipt, from the moment it is finished until the
coordinator answers for it. A daemon that dies in between (or whose coordinator is down when it
stops) hands the result in when it starts again, before its first heartbeat: the coordinator
keeps a lease for its TTL after the last heartbeat, so a quick restart loses no work, and
reissues the leases the new run's first heartbeat does not list (repositories.heartbeats), so a
kept result must be in before it. A result the coordinator no longer wants (its lease ended) is
answered with a rejection and dropped.

Training results are not kept: their audit may ask for checkpoints, which a new daemon no longer
has, and an unanswered audit counts against the node.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tensorgrid.types import Receipt

log = logging.getLogger("tensorgrid.node")


@dataclass(frozen=True)
class Kept:
    receipt: Receipt
    output: Path
    size: int


class PendingResults:
    """root/<task>-<attempt>.out with its receipt in .json beside it (written last, atomically)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def keep(self, receipt: Receipt, out: Path) -> Kept:
        """Move a finished output here and record its receipt; returns where it now is."""
        dest = self.root / f"{receipt.task_id}-{receipt.attempt}.out"
        os.replace(out, dest)
        size = dest.stat().st_size
        record = {
            "job_id": receipt.job_id,
            "task_id": receipt.task_id,
            "attempt": receipt.attempt,
            "input_hash": receipt.input_hash,
            "output_hash": receipt.output_hash,
            "commitment": receipt.commitment,
            "signature": receipt.signature.hex(),
            "size": size,
        }
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, dest.with_suffix(".json"))
        return Kept(receipt, dest, size)

    def any(self) -> bool:
        return any(self.root.glob("*.json"))

    def drop(self, kept: Kept) -> None:
        kept.output.with_suffix(".json").unlink(missing_ok=True)
        kept.output.unlink(missing_ok=True)

    def stored(self) -> list[Kept]:
        """What an earlier run kept; anything unreadable or incomplete is deleted."""
        found = []
        for meta in sorted(self.root.glob("*.json")):
            out = meta.with_suffix(".out")
            try:
                r = json.loads(meta.read_text())
                receipt = Receipt(
                    job_id=str(r["job_id"]),
                    task_id=str(r["task_id"]),
                    attempt=int(r["attempt"]),
                    input_hash=str(r["input_hash"]),
                    output_hash=str(r["output_hash"]),
                    commitment=str(r["commitment"]),
                    signature=bytes.fromhex(r["signature"]),
                )
                kept = Kept(receipt, out, int(r["size"]))
                if out.stat().st_size != kept.size:
                    raise ValueError(f"{out.name} is {out.stat().st_size} bytes, not {kept.size}")
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("dropping a kept result that cannot be read (%s): %s", meta.name, e)
                meta.unlink(missing_ok=True)
                out.unlink(missing_ok=True)
                continue
            found.append(kept)
        for stray in [*self.root.glob("*.out"), *self.root.glob("*.tmp")]:  # no receipt: never kept
            if not stray.with_suffix(".json").exists():
                stray.unlink(missing_ok=True)
        return found
