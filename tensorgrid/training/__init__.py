"""DiLoCo-style training: data plans, the inner loop, the outer step, the baseline."""

from tensorgrid.training.baseline import BaselineResult, Communication, communication, run_baseline
from tensorgrid.training.commitments import chain, chain_link, checkpoint_steps, state_digest
from tensorgrid.training.compression import PseudoGradient, compress, decompress, read_result, write_result
from tensorgrid.training.data import DataSplit, derive_seed, plan_split, round_shards, shard_rows, write_rows
from tensorgrid.training.inner import InnerResult, InnerSettings, ReplayResult, replay_segment, run_inner
from tensorgrid.training.local import LocalRun, run_local
from tensorgrid.training.outer import (
    RoundOutcome,
    apply_round,
    average,
    check_pseudo_gradient,
    evaluate,
    initial_weights,
    outer_step,
    parameter_names,
)

__all__ = [
    "BaselineResult",
    "Communication",
    "DataSplit",
    "InnerResult",
    "InnerSettings",
    "LocalRun",
    "PseudoGradient",
    "ReplayResult",
    "RoundOutcome",
    "apply_round",
    "average",
    "chain",
    "chain_link",
    "check_pseudo_gradient",
    "checkpoint_steps",
    "communication",
    "compress",
    "decompress",
    "derive_seed",
    "evaluate",
    "initial_weights",
    "outer_step",
    "parameter_names",
    "plan_split",
    "read_result",
    "replay_segment",
    "round_shards",
    "run_baseline",
    "run_inner",
    "run_local",
    "shard_rows",
    "state_digest",
    "write_result",
    "write_rows",
]
