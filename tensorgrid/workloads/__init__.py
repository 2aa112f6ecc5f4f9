"""Workloads are data, never code: torch.export programs and safetensors files."""

from tensorgrid.workloads.inference import InferenceStats, pick_device, run_inference
from tensorgrid.workloads.model import ProgramInfo, check_program, export_program, load_program
from tensorgrid.workloads.tensorfile import (
    Header,
    TensorInfo,
    batch_rows,
    concat,
    load_tensors,
    read_header,
    save_tensors,
    split,
    write_shard,
)

__all__ = [
    "Header",
    "InferenceStats",
    "ProgramInfo",
    "TensorInfo",
    "batch_rows",
    "check_program",
    "concat",
    "export_program",
    "load_program",
    "load_tensors",
    "pick_device",
    "read_header",
    "run_inference",
    "save_tensors",
    "split",
    "write_shard",
]
