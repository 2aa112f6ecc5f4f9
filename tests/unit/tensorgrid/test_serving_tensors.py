"""tensorgrid.serving.tensors: the short ways on every request's path give what the long ones gave.

An answer is written by safetensors' serializer from the tensors' memory (not through
safetensors.torch.save): the same bytes, for every dtype and layout a program may return. A
checked header is remembered by its bytes: bytes that differ anywhere it reads are checked
again, and a header that fails is never remembered.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.serving import tensors as module
from tensorgrid.serving.tensors import check_tensor_bytes, tensors_from_bytes, tensors_to_bytes
from tensorgrid.workloads.tensorfile import header_of_bytes

DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16,
    torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint64, torch.uint32, torch.uint16, torch.uint8, torch.bool,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.complex64,
]  # fmt: skip
SHAPES = [(), (0,), (1, 10), (3, 4, 5), (2, 0, 3)]


def _tensor(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(len(shape))
    return (torch.randn(shape) * 10).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_an_answer_has_the_bytes_safetensors_save_gives(dtype: torch.dtype) -> None:
    for shape in SHAPES:
        t = _tensor(dtype, shape)
        tensors = {"output": t, "b": t.clone(), "a": _tensor(dtype, (2,))}
        assert tensors_to_bytes(tensors) == save(dict(sorted(tensors.items()))), shape


def test_views_and_transposes_are_written_as_their_contiguous_copies() -> None:
    x = torch.randn(8, 10)
    for piece in x.split([3, 5]):  # a micro-batch's outputs cut back by rows
        assert tensors_to_bytes({"output": piece}) == save({"output": piece.contiguous()})
    assert tensors_to_bytes({"output": x.t()}) == save({"output": x.t().contiguous()})
    assert tensors_from_bytes(tensors_to_bytes({"output": x.t()}))["output"].equal(x.t())


def test_what_save_refuses_is_still_refused() -> None:
    x = torch.randn(4)
    with pytest.raises(RuntimeError, match="share memory"):
        tensors_to_bytes({"a": x, "b": x})


@pytest.fixture
def memo(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[bytes, int], object]:
    fresh: dict[tuple[bytes, int], object] = module.OrderedDict()  # type: ignore[assignment]
    monkeypatch.setattr(module, "_checked", fresh)
    return fresh


def _request(rows: int = 1) -> bytes:
    return tensors_to_bytes({"x": torch.ones(rows, 4)})


def test_a_checked_header_is_not_parsed_again(memo: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _request()
    first = check_tensor_bytes(data, 1 << 20)
    assert first == header_of_bytes(data)
    parsed: list[bytes] = []
    monkeypatch.setattr(module, "header_of_bytes", lambda d, name="request": parsed.append(d) or header_of_bytes(d))
    assert check_tensor_bytes(_request(), 1 << 20) is first  # other bytes, the same header and length
    assert parsed == []
    check_tensor_bytes(_request(rows=2), 1 << 20)  # another header: parsed
    assert len(parsed) == 1


def test_bytes_that_differ_where_the_check_reads_are_checked_again(memo: dict) -> None:
    data = _request()
    check_tensor_bytes(data, 1 << 20)
    with pytest.raises(InvalidTensorFile, match="trailing"):
        check_tensor_bytes(data + b"\0\0\0\0", 1 << 20)  # the same header, a longer file
    with pytest.raises(InvalidTensorFile, match="truncated"):
        check_tensor_bytes(data[:-4], 1 << 20)
    with pytest.raises(InvalidTensorFile, match="over the limit"):
        check_tensor_bytes(data, len(data) - 1)  # the size limit is never taken from the memo


def test_a_header_that_fails_is_never_remembered(memo: dict) -> None:
    header = json.dumps({"x": {"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 15]}}).encode()
    bad = struct.pack("<Q", len(header)) + header + bytes(16)
    for _ in range(2):
        with pytest.raises(InvalidTensorFile, match="need 16"):
            check_tensor_bytes(bad, 1 << 20)
    assert memo == {}


def test_the_memo_is_bounded(memo: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "MEMO_ENTRIES", 3)
    for rows in range(1, 7):
        check_tensor_bytes(_request(rows), 1 << 20)
    assert len(memo) == 3
    long_name = "x" * (module.MEMO_HEADER_BYTES + 1)  # a header past MEMO_HEADER_BYTES is checked each time
    check_tensor_bytes(tensors_to_bytes({long_name: torch.ones(1)}), 1 << 20)
    assert len(memo) == 3
