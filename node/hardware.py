"""What this machine offers the grid: device kind, memory for tasks, cores, GPUs."""

from __future__ import annotations

import logging
from importlib.metadata import version

import psutil

from tensorgrid.errors import TensorGridError
from tensorgrid.processes import cpu_cores
from tensorgrid.types import Capabilities, Gpu

__all__ = ["HardwareError", "detect"]

log = logging.getLogger("tensorgrid.node.hardware")

DEVICES = ("auto", "cpu", "cuda")


class HardwareError(TensorGridError):
    """The operator asked for hardware this machine does not have."""


def detect(device: str = "auto", memory_limit_bytes: int | None = None) -> Capabilities:
    """Describe this machine for the coordinator.

    device: "auto" uses CUDA when available, "cpu" forces the CPU even with a GPU, "cuda"
    requires one. memory_limit_bytes: the operator's cap on what tasks may use; it can only
    lower the detected amount (GPU memory on cuda, available RAM on cpu).
    """
    if device not in DEVICES:
        raise HardwareError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if memory_limit_bytes is not None and memory_limit_bytes <= 0:
        raise HardwareError(f"the memory limit must be positive, got {memory_limit_bytes}")
    if device == "cpu":  # nothing to ask torch: the daemon never loads it (its task worker does)
        return _describe("cpu", int(psutil.virtual_memory().available), (), memory_limit_bytes, version("torch"))
    import torch  # deferred: the daemon's import stays light until hardware is probed

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise HardwareError(
            "device 'cuda' was requested but torch sees no usable CUDA GPU "
            f"(torch {torch.__version__}); check the driver or run with --device cpu"
        )
    gpus: tuple[Gpu, ...] = ()
    if has_cuda and device != "cpu":
        gpus = tuple(
            Gpu(name=props.name, memory_bytes=int(props.total_memory))
            for props in (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count()))
        )
        kind, memory = "cuda", gpus[0].memory_bytes
    else:
        kind, memory = "cpu", int(psutil.virtual_memory().available)
    return _describe(kind, memory, gpus, memory_limit_bytes, str(torch.__version__))


def _describe(
    kind: str, memory: int, gpus: tuple[Gpu, ...], memory_limit_bytes: int | None, torch_version: str
) -> Capabilities:
    if memory_limit_bytes is not None:
        if memory_limit_bytes > memory:
            log.warning(
                "memory limit %d exceeds the %d bytes available on %s; using what is available",
                memory_limit_bytes,
                memory,
                kind,
            )
        memory = min(memory, memory_limit_bytes)
    return Capabilities(
        device_kind=kind,
        memory_bytes=memory,
        cpu_cores=cpu_cores(),
        gpus=gpus,
        torch_version=torch_version,
    )
