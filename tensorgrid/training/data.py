"""Deterministic data plans for training: a held-out split, then disjoint shards per round.

Everything here is a function of row indices and the job seed, so the coordinator can
recompute any shard after a restart and a verifier can rebuild the shard it replays.
Permutations come from a counter-based hash (splitmix64 over the row index, keyed by
blake2b of the seed and a label), not from a library RNG, so they never change with a
numpy or torch upgrade and anyone can re-derive them.

Shards: round r belongs to epoch r // R at slot r % R, where R = rounds per epoch =
train_rows // (workers * shard_rows). Epoch e has its own permutation of the training
rows; worker w of round r gets positions [(slot*W + w)*S, (slot*W + w + 1)*S) of it. So the
shards of one round are disjoint, and no row repeats within an epoch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.spec import TrainingSpec, eval_rows
from tensorgrid.workloads.tensorfile import Header, batch_rows, read_header, save_tensors

__all__ = [
    "DataSplit",
    "derive_seed",
    "permutation",
    "plan_split",
    "round_shards",
    "shard_rows",
    "split_rows",
    "write_rows",
]

_U64 = np.uint64
_MASK = (1 << 64) - 1


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed for (seed, labels...), e.g. derive_seed(seed, "task", round, worker)."""
    text = "/".join(str(x) for x in (seed, *labels)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def permutation(n: int, seed: int, label: str) -> np.ndarray:
    """A permutation of range(n) fixed by (seed, label): rows sorted by a keyed hash."""
    key = _U64(derive_seed(seed, label) & _MASK)
    with np.errstate(over="ignore"):
        keys = _splitmix64(np.arange(n, dtype=_U64) * _U64(0xD1B54A32D192ED03) + key)
    return np.argsort(keys, kind="stable").astype(np.int64)


@dataclass(frozen=True)
class DataSplit:
    """Row indices (ascending) of the training and held-out parts of a dataset."""

    train: np.ndarray
    heldout: np.ndarray


def split_rows(rows: int, heldout_rows: int, seed: int) -> DataSplit:
    """Hold out `heldout_rows` of `rows` rows, chosen by the seed."""
    if not 0 <= heldout_rows < rows:
        raise InvalidTensorFile(f"cannot hold out {heldout_rows} of {rows} rows and still train")
    perm = permutation(rows, seed, "split")
    return DataSplit(train=np.sort(perm[heldout_rows:]), heldout=np.sort(perm[:heldout_rows]))


def plan_split(spec: TrainingSpec, rows: int) -> DataSplit:
    """The spec's train/held-out split of a dataset with `rows` rows."""
    return split_rows(rows, eval_rows(spec, rows), spec.seed)


def shard_rows(train: np.ndarray, *, seed: int, round: int, worker: int, workers: int, shard_size: int) -> np.ndarray:
    """Dataset rows of worker `worker`'s shard in round `round`, in mini-batch order."""
    per_round = workers * shard_size
    if not 0 <= worker < workers or round < 0 or shard_size <= 0:
        raise ValueError(f"bad shard request: round {round}, worker {worker} of {workers}, size {shard_size}")
    if per_round > len(train):
        raise InvalidTensorFile(
            f"a round needs {workers} × {shard_size} = {per_round} rows; the training split has {len(train)}"
        )
    rounds_per_epoch = len(train) // per_round
    epoch, slot = divmod(round, rounds_per_epoch)
    perm = permutation(len(train), seed, f"epoch{epoch}")
    start = (slot * workers + worker) * shard_size
    return np.asarray(train)[perm[start : start + shard_size]]


def round_shards(spec: TrainingSpec, split: DataSplit, round: int) -> list[np.ndarray]:
    """Every worker's shard rows for one round of the spec."""
    size = spec.batch_size * spec.inner_steps
    return [
        shard_rows(split.train, seed=spec.seed, round=round, worker=w, workers=spec.workers_per_round, shard_size=size)
        for w in range(spec.workers_per_round)
    ]


def write_rows(
    src_path: str | os.PathLike[str],
    rows: np.ndarray,
    dst_path: str | os.PathLike[str],
    header: Header | None = None,
) -> int:
    """Write the given rows (in that order) of every tensor of src_path to dst_path.

    Reads one row at a time, so memory is bounded by the output, never the whole dataset.
    The output bytes depend only on the input file and the row list. Returns the row count.
    """
    header = header if header is not None else read_header(src_path)
    total = batch_rows(header)
    index = np.asarray(rows, dtype=np.int64)
    if index.ndim != 1 or index.size == 0 or index.min() < 0 or index.max() >= total:
        raise InvalidTensorFile(f"row indices must be a non-empty 1-D list within 0..{total - 1}")
    out: dict[str, torch.Tensor] = {}
    with safe_open(os.fspath(src_path), framework="pt", device="cpu") as f:
        for name in sorted(header.tensors):
            view = f.get_slice(name)
            out[name] = torch.cat([view[int(i) : int(i) + 1] for i in index])
    save_tensors(out, dst_path)
    return int(index.size)
