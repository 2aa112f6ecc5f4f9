"""Hardware detection on this (CPU-only) machine and the operator's overrides."""

from __future__ import annotations

import psutil
import pytest
import torch

from node.hardware import HardwareError, detect


def test_detect_cpu_machine() -> None:
    caps = detect()
    assert caps.device_kind == ("cuda" if torch.cuda.is_available() else "cpu")
    assert caps.cpu_cores >= 1
    assert 0 < caps.memory_bytes <= psutil.virtual_memory().total
    assert caps.torch_version == torch.__version__


def test_cpu_override_and_memory_cap() -> None:
    caps = detect("cpu", memory_limit_bytes=256 * 2**20)
    assert caps.device_kind == "cpu" and caps.gpus == ()
    assert caps.memory_bytes == 256 * 2**20
    huge = detect("cpu", memory_limit_bytes=2**60)  # cannot promise more than the machine has
    assert huge.memory_bytes <= psutil.virtual_memory().total


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(HardwareError, match="no usable CUDA GPU"):
        detect("cuda")


@pytest.mark.parametrize(("device", "memory"), [("tpu", None), ("cpu", 0), ("cpu", -5)])
def test_bad_overrides(device: str, memory: int | None) -> None:
    with pytest.raises(HardwareError):
        detect(device, memory)
