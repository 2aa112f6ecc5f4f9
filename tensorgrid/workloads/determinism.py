"""The determinism contract of inference programs: each output row depends on its input row alone.

Verification re-executes a sample of a shard's rows somewhere else, in another batch, and
compares. That is only fair to honest nodes when a row's output does not depend on the
other rows of its batch (x - x.mean(0), BatchNorm in train mode, a sort over the batch …),
nor on their order, nor on randomness (rand_like, dropout in train mode, bernoulli …). A
program that breaks this makes every check of a correct result disagree.

`probe` runs a program on a few sample rows of a job's input and says whether its rows are
independent: the shard's first batch twice (same rows, same order: randomness), the batch
reversed (order), the sampled rows alone and together (batch composition). Its cost is
bounded: at most `max_batch` rows in the batch (the caller sizes it to the job: budget_batch),
`samples` rows alone, and a time box after which it stops and says it could not finish. It
is pure: no files, no network; the caller loads the program and decides where it runs (a
stranger's graph belongs in a sandbox).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from tensorgrid.workloads.rowcontract import DEADLINE_S, MAX_BATCH, PROBE_BUDGET, SAMPLES, Determinism, budget_batch
from tensorgrid.workloads.tolerance import tolerance

__all__ = [
    "DEADLINE_S",
    "MAX_BATCH",
    "PROBE_BUDGET",
    "SAMPLES",
    "Determinism",
    "budget_batch",
    "outputs_close",
    "probe",
]

Forward = Callable[[Sequence[torch.Tensor]], object]


def probe(
    forward: Forward,
    inputs: Sequence[torch.Tensor],
    *,
    batch_size: int = 0,
    samples: int = SAMPLES,
    max_batch: int = MAX_BATCH,
    deadline_s: float = DEADLINE_S,
    seed: int = 0,
) -> Determinism:
    """Probe row independence of `forward` (the program's call) on the first batch of `inputs`.

    `inputs` are the program's positional inputs (the same rows each, dim 0); `batch_size` is
    the job's (0: the whole shard in one batch, capped at max_batch rows here).
    """
    rows = min(int(inputs[0].shape[0]), max_batch, batch_size or max_batch)
    batch = [t[:rows] for t in inputs]
    if rows < 2:
        return Determinism(True, "", rows, finished=False)  # one row has no neighbours to depend on
    stop = time.monotonic() + deadline_s
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(rows), min(samples, rows)))
    # each whole run of the batch, at least: its CPU time over the threads torch may run at once
    # (a wall time would grow with whatever else holds the machine's cores: the referee runs niced)
    took: list[float] = []
    threads = max(1, torch.get_num_threads())

    def timed() -> dict[str, torch.Tensor]:
        began = time.process_time()
        out = _run(forward, batch)
        took.append((time.process_time() - began) / threads)
        return out

    first = timed()
    twice = "rows gave different outputs on two runs of one batch"
    tests: list[tuple[str, Callable[[], str]]] = [
        ("repeat", lambda: _same(first, timed(), None, twice)),
        ("order", lambda: _reordered(forward, batch, first, rows)),
        ("together", lambda: _subset(forward, batch, first, picks, "in a smaller batch")),
        *[("alone", lambda i=i: _subset(forward, batch, first, [i], "alone")) for i in picks],  # type: ignore[misc]
    ]
    for _name, test in tests:
        if time.monotonic() > stop:
            return Determinism(True, "", rows, finished=False, batch_s=min(took))
        why = test()
        if why:
            return Determinism(False, why, rows, batch_s=min(took))
    return Determinism(True, "", rows, batch_s=min(took))


HINT = (
    " Each output row must depend only on its own input row: no statistics over the batch "
    "(x - x.mean(0), BatchNorm or dropout in train mode: export in eval mode) and no random operators."
)


def _run(forward: Forward, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = forward(list(batch))
    return _named(out)


def _reordered(forward: Forward, batch: Sequence[torch.Tensor], first: dict[str, torch.Tensor], rows: int) -> str:
    order = torch.arange(rows - 1, -1, -1)
    out = _run(forward, [t.index_select(0, order) for t in batch])
    back = {k: v.index_select(0, order) for k, v in out.items()}  # reversing twice restores row order
    return _same(first, back, None, "rows gave different outputs when the batch was reversed")


def _subset(
    forward: Forward, batch: Sequence[torch.Tensor], first: dict[str, torch.Tensor], picks: list[int], how: str
) -> str:
    index = torch.tensor(picks, dtype=torch.long)
    out = _run(forward, [t.index_select(0, index) for t in batch])
    return _same(first, out, index, f"rows gave different outputs {how} than in their batch of {batch[0].shape[0]}")


def _same(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor], index: torch.Tensor | None, why: str) -> str:
    want = ref if index is None else {k: v.index_select(0, index) for k, v in ref.items()}
    return "" if outputs_close(want, got) else "the program's " + why + "." + HINT


def outputs_close(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], device_class: str = "cpu") -> bool:
    """Same names, shapes and dtypes; floats within the dtype's tolerance, the rest equal."""
    if set(a) != set(b):
        return False
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point():
            atol, rtol = tolerance(x.dtype, device_class)
            if not bool(torch.isclose(x.double(), y.double(), rtol=rtol, atol=atol, equal_nan=True).all()):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def _named(out: object) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {"output": out.detach().cpu()}
    if isinstance(out, Mapping):
        return {str(k): v.detach().cpu() for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, Sequence) and not isinstance(out, str):
        return {f"output_{i}": v.detach().cpu() for i, v in enumerate(out) if isinstance(v, torch.Tensor)}
    return {}
