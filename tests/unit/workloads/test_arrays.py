"""Safetensors as numpy arrays: the same bits in and out as safetensors.torch, float8 and
bfloat16 decoded as torch decodes them, rows taken as torch's index_select takes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load, save, save_file

from tensorgrid.errors import InvalidTensorFile, UnsafeFileError
from tensorgrid.workloads.arrays import (
    Array,
    array_of,
    arrays_from_bytes,
    arrays_to_bytes,
    concat_arrays,
    from_torch,
    load_arrays,
    save_arrays,
    to_torch,
)
from tensorgrid.workloads.prompts import check_prompts

DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16,
    torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint64, torch.uint32, torch.uint16, torch.uint8, torch.bool,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
    torch.complex64,
]  # fmt: skip


def every_dtype() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        size = torch.empty(0, dtype=dtype).element_size()
        raw = torch.randint(0, 256, (3, 4, size), generator=gen, dtype=torch.uint8)
        tensors[f"t{i}"] = raw.view(dtype).reshape(3, 4) if dtype != torch.bool else raw[..., 0] % 2 == 1
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 3, dtype=torch.bfloat16)
    return tensors


def test_bytes_and_files_are_those_of_safetensors_torch(tmp_path: Path) -> None:
    tensors = every_dtype()
    data = save(tensors)
    arrays = arrays_from_bytes(data)
    assert arrays_to_bytes(arrays) == data
    assert arrays_to_bytes({k: from_torch(v) for k, v in tensors.items()}) == data
    assert save({k: to_torch(a) for k, a in arrays.items()}) == data
    save_file(tensors, tmp_path / "torch.safetensors", metadata={"k": "v"})
    save_arrays(arrays, tmp_path / "numpy.safetensors", metadata={"k": "v"})
    assert (tmp_path / "torch.safetensors").read_bytes() == (tmp_path / "numpy.safetensors").read_bytes()
    assert arrays_to_bytes(load_arrays(tmp_path / "torch.safetensors")) == data
    assert arrays["scalar"].shape == () and arrays["empty"].shape == (0, 3)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d.is_floating_point], ids=str)
def test_every_bit_pattern_decodes_as_torch_decodes_it(dtype: torch.dtype) -> None:
    size = torch.empty(0, dtype=dtype).element_size()
    if size <= 2:  # all of them
        raw = torch.arange(2 ** (8 * size), dtype=torch.int64).to(torch.int16 if size == 2 else torch.uint8)
    else:
        raw = torch.randint(0, 256, (1 << 16, size), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    tensor = raw.view(dtype).reshape(-1)
    expected = tensor.double().numpy()
    got = from_torch(tensor).floats()
    assert np.array_equal(got, expected, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


def test_rows_are_taken_as_index_select_takes_them(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    x = torch.randn(5, 2).to(torch.bfloat16)
    save_file({"x": x, "y": torch.arange(5)}, path)
    for rows in ([4, 0, 0, 2], [], [1]):
        got = load_arrays(path, rows)
        index = torch.tensor(rows, dtype=torch.long)
        assert torch.equal(to_torch(got["x"]), x.index_select(0, index))
        assert torch.equal(to_torch(got["y"]), torch.arange(5).index_select(0, index))
    for rows in ([5], [-1], [0, 9]):
        with pytest.raises(InvalidTensorFile, match="rows"):
            load_arrays(path, rows)
    save_file({"s": torch.tensor(3.0)}, path)
    assert load_arrays(path, [0])["s"].shape == ()
    for rows in ([], [1], [0, 0]):  # index_select refuses these on a scalar too
        with pytest.raises(InvalidTensorFile, match="scalar"):
            load_arrays(path, rows)


def test_strangers_bytes_are_checked_first(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(2)}, tmp_path / "p.pt")
    with pytest.raises(UnsafeFileError):
        arrays_from_bytes((tmp_path / "p.pt").read_bytes())
    with pytest.raises(InvalidTensorFile):
        arrays_from_bytes(save({"x": torch.zeros(2)})[:-1])


def test_slicing_joining_and_building_keep_dtype_and_bits() -> None:
    x = torch.randn(4, 3).to(torch.bfloat16)
    a = from_torch(x)
    assert torch.equal(to_torch(a[1:3]), x[1:3]) and a[1:3].dtype == "BF16"
    assert torch.equal(to_torch(a[None, 0]), x[None, 0]) and a[0, 1].shape == ()
    joined = concat_arrays([a[:1], a[1:]])
    assert torch.equal(to_torch(joined), x)
    with pytest.raises(InvalidTensorFile, match="dtypes"):
        concat_arrays([a, from_torch(x.float())])
    assert array_of(np.arange(3)).dtype == "I64" and array_of([True]).dtype == "BOOL"
    assert array_of(np.zeros(2, dtype=np.float16)).dtype == "F16"
    assert torch.equal(to_torch(array_of(x.view(torch.int16).numpy(), "BF16")), x)
    with pytest.raises(TypeError):
        Array("BF16", np.zeros(2, dtype=np.float32))
    assert load(arrays_to_bytes({"i": array_of(np.arange(3, dtype=np.int64))}))["i"].tolist() == [0, 1, 2]


def test_prompt_checks_are_the_same_for_arrays_and_tensors() -> None:
    tokens, lengths = torch.randint(0, 50, (6, 8)), torch.full((6,), 8, dtype=torch.int64)
    cases = [
        {"tokens": tokens},
        {"tokens": tokens + 50, "lengths": lengths},
        {"tokens": tokens, "lengths": lengths * 0},
        {"tokens": tokens.float(), "lengths": lengths},
        {"tokens": tokens, "lengths": lengths, "index": torch.arange(5)},
        {"tokens": tokens, "lengths": lengths, "seeds": torch.arange(5)},
        {"tokens": tokens[:0], "lengths": lengths[:0]},
        {"tokens": tokens, "lengths": lengths},
    ]
    for tensors in cases:
        outcomes = []
        for form in (tensors, {k: from_torch(v) for k, v in tensors.items()}):
            try:
                outcomes.append(check_prompts(form, 50))
            except InvalidTensorFile as e:
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1]
    assert outcomes == [6, 6]
