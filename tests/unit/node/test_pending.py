"""Kept results (node.pending): a kept result survives the daemon with its receipt; anything a
crash left half-written, or someone tampered with, is dropped rather than handed in."""

from __future__ import annotations

from pathlib import Path

from node.pending import PendingResults
from tensorgrid.types import Receipt

RECEIPT = Receipt("a" * 64, "b" * 64, 2, "c" * 64, "d" * 64, signature=b"\x01" * 65)


def _output(tmp_path: Path, data: bytes = b"result bytes") -> Path:
    out = tmp_path / "task.out"
    out.write_bytes(data)
    return out


def test_a_kept_result_is_found_by_the_next_run(tmp_path: Path) -> None:
    kept = PendingResults(tmp_path / "pending").keep(RECEIPT, _output(tmp_path))
    again = PendingResults(tmp_path / "pending")  # a new daemon
    assert again.any()
    [found] = again.stored()
    assert found == kept and found.receipt == RECEIPT and found.output.read_bytes() == b"result bytes"
    again.drop(found)
    assert not again.any() and list((tmp_path / "pending").iterdir()) == []


def test_unreadable_or_incomplete_results_are_dropped(tmp_path: Path) -> None:
    pending = PendingResults(tmp_path / "pending")
    truncated = pending.keep(RECEIPT, _output(tmp_path))
    truncated.output.write_bytes(b"res")  # not the size recorded
    (tmp_path / "pending" / "garbage.json").write_text("{not json")
    (tmp_path / "pending" / "orphan.out").write_bytes(b"no receipt")  # died before the receipt was written
    assert pending.stored() == []
    assert list((tmp_path / "pending").iterdir()) == []
