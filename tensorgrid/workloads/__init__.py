"""Workloads are data, never code: torch.export programs and safetensors files.

The package itself imports nothing: `tensorfile`'s header functions serve the SDK, the CLI and
the node daemon without loading torch, which only the modules that run programs need; `arrays`
(numpy) reads, compares and writes tensors for the coordinator, whose own process runs no program.
"""
