"""DiLoCo-style training: specs, data plans, the inner loop, the outer step, the baseline."""

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
from tensorgrid.training.spec import (
    AdamW,
    NesterovSGD,
    TrainingSpec,
    canonical_training_json,
    check_dataset,
    parse_training,
    training_from_dict,
    training_to_dict,
    validate_training,
)

__all__ = [
    "AdamW",
    "BaselineResult",
    "Communication",
    "DataSplit",
    "InnerResult",
    "InnerSettings",
    "LocalRun",
    "NesterovSGD",
    "PseudoGradient",
    "ReplayResult",
    "RoundOutcome",
    "TrainingSpec",
    "apply_round",
    "average",
    "canonical_training_json",
    "chain",
    "chain_link",
    "check_dataset",
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
    "parse_training",
    "plan_split",
    "read_result",
    "replay_segment",
    "round_shards",
    "run_baseline",
    "run_inner",
    "run_local",
    "shard_rows",
    "state_digest",
    "training_from_dict",
    "training_to_dict",
    "validate_training",
    "write_result",
    "write_rows",
]
