from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tensorgrid.errors import ExecutionError, InvalidTensorFile
from tensorgrid.training.commitments import chain
from tensorgrid.training.compression import (
    SCALE_SUFFIX,
    PseudoGradient,
    compress,
    compressed_bytes,
    decompress,
    read_result,
    write_result,
)
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(64, 32, generator=g) * 1e-2,
        "b": torch.randn(32, generator=g) * 3.0,
        "z": torch.zeros(5),
    }


def test_int8_error_is_at_most_half_a_step() -> None:
    x = _tensors()
    stored = compress(x, "int8")
    assert stored["w"].dtype == torch.int8 and stored["w" + SCALE_SUFFIX].ndim == 0
    back = decompress(stored, "int8")
    for name, value in x.items():
        step = float(value.abs().max()) / 127
        assert float((back[name] - value).abs().max()) <= step / 2 + 1e-7
    assert torch.equal(back["z"], torch.zeros(5))


def test_fp16_relative_error_and_range() -> None:
    x = _tensors()
    back = decompress(compress(x, "fp16"), "fp16")
    for name, value in x.items():
        assert torch.allclose(back[name], value, rtol=2**-11, atol=6e-8)
    with pytest.raises(ExecutionError, match="beyond fp16's range"):
        compress({"big": torch.tensor([1e6])}, "fp16")


def test_none_is_exact_and_nan_is_refused() -> None:
    x = _tensors()
    assert all(torch.equal(decompress(compress(x, "none"), "none")[n], x[n]) for n in x)
    with pytest.raises(ExecutionError, match="diverged"):
        compress({"w": torch.tensor([float("nan")])}, "int8")


def test_decompress_refuses_forged_files() -> None:
    stored = compress(_tensors(), "int8")
    with pytest.raises(InvalidTensorFile, match="scale"):
        decompress({k: v for k, v in stored.items() if k != "w" + SCALE_SUFFIX}, "int8")
    with pytest.raises(InvalidTensorFile, match="stores torch.float16"):
        decompress({"w": torch.zeros(2)}, "fp16")
    stored["b" + SCALE_SUFFIX] = torch.tensor(float("inf"))
    with pytest.raises(InvalidTensorFile, match="finite"):
        decompress(stored, "int8")


def test_payload_sizes() -> None:
    shapes = {"w": (64, 32), "b": (32,)}
    assert compressed_bytes(shapes, "none") == 2080 * 4
    assert compressed_bytes(shapes, "fp16") == 2080 * 2
    assert compressed_bytes(shapes, "int8") == 2080 + 2 * 4


def test_result_file_round_trip(tmp_path: Path) -> None:
    digests = ["aa" * 64, "bb" * 64, "cc" * 64]
    links = chain(bytes.fromhex(d) for d in digests)
    result = PseudoGradient(_tensors(), rows=40, steps=3, losses=[2.5, 1.25, 0.1], checkpoint_steps=[0, 2, 3],
                            commitments=links, compression="int8", checkpoint_digests=digests)  # fmt: skip
    write_result(result, tmp_path / "r.safetensors", "int8")
    back = read_result(tmp_path / "r.safetensors")
    assert (back.rows, back.steps, back.losses, back.checkpoint_steps) == (40, 3, [2.5, 1.25, 0.1], [0, 2, 3])
    assert back.final_commitment == links[-1] and back.compression == "int8" and back.checkpoint_digests == digests
    forged = replace(result, checkpoint_digests=["aa" * 64, "bb" * 64, "dd" * 64])  # digests that do not chain
    write_result(forged, tmp_path / "f.safetensors", "int8")
    with pytest.raises(InvalidTensorFile, match="not the chain over the checkpoint digests"):
        read_result(tmp_path / "f.safetensors")
    assert set(back.tensors) == {"w", "b", "z"} and back.tensors["w"].dtype == torch.float32
    save_tensors(load_tensors(tmp_path / "r.safetensors"), tmp_path / "plain.safetensors")
    with pytest.raises(InvalidTensorFile, match="not a pseudo-gradient file"):
        read_result(tmp_path / "plain.safetensors")
