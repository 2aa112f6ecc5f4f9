"""The referee's rules: compare its re-execution with everyone's rows, and before blaming
anyone, make sure that re-execution is sound.

Sound means: the subject's whole shard, run twice here with the job's batch size (the batch
composition the node had), gives the same rows both times (no randomness), and those rows
equal the sampled rows run on their own, as the checker and the referee ran them (each row
independent of the others in its batch). A program that fails either test is not
verifiable: any honest node could be "wrong" about it, so nobody is blamed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from coordinator.repositories.verification.rulings import Ruling, RulingInfo
from coordinator.services.verification.compare import Rows, load_rows, rows_match

Loader = Callable[..., Rows]  # (blob sha, rows or None) -> that output's rows
Runner = Callable[[Path, Path], None]  # (input file, output file): the job's program


def device_class(info: RulingInfo, node: str) -> str:
    """The referee runs on CPU: a comparison with a node's rows takes CUDA tolerance if it ran on CUDA."""
    return "cuda" if node in info.cuda else "cpu"


def judge(info: RulingInfo, rows: list[int], mine: Rows, load: Loader) -> Ruling:
    """The referee's rows against the subject's (at `rows`) and each checker's (their head)."""
    head = list(range(len(rows)))
    subject_right = rows_match(load(info.subject_output, rows), mine, device_class(info, info.subject_node))
    right = tuple(node for node, sha in info.checkers if rows_match(load(sha, head), mine, device_class(info, node)))
    return Ruling("", subject_right, right)


def blames(ruling: Ruling, info: RulingInfo) -> bool:
    """Would carrying out this ruling catch anyone?"""
    return not ruling.subject_right or any(node not in ruling.right_checkers for node, _ in info.checkers)


def soundness(shard: Path | None, rows: list[int], mine: Rows, run: Runner, tmp: Path) -> str:
    """Empty when the re-execution may blame; otherwise why the program is not verifiable.

    `shard` is the subject task's whole input; `rows` the subject's rows the referee re-ran.
    """
    if shard is None or not shard.exists():
        return "the subject's shard is gone, so the referee cannot reproduce its batches"
    outs = []
    for i in (1, 2):
        out = tmp / f"shard{i}.safetensors"
        run(shard, out)
        outs.append(load_rows(out, rows))
    if not outs[0] or not rows_match(outs[0], outs[1]):
        return "running the same shard twice gave different rows (random operators or nondeterminism)"
    if not rows_match(outs[0], mine):
        return (
            "rows gave different outputs in the shard's batches than on their own: each output row "
            "must depend only on its own input row"
        )
    return ""
