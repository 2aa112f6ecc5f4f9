"""The coordinator's comparison of rows (numpy) decides exactly as the torch comparison it
replaced, over every dtype a safetensors file can hold: NaN, ±inf, signed zeros, subnormals,
values a last bit apart, names, shapes and dtypes that differ, on both device classes."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import save

from coordinator.services.verification.compare import rows_match
from tensorgrid.serving import arrays_from_bytes
from tensorgrid.workloads.tolerance import tolerance

FLOATS = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
]  # fmt: skip
EXACT = [
    torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint64, torch.uint32, torch.uint16, torch.uint8, torch.bool, torch.complex64,
]  # fmt: skip
BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
CLASSES = ("cpu", "cuda")


def torch_rows_match(
    reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], device_class: str = "cpu"
) -> bool:
    """The comparison as it was written with torch (the semantics the numpy one must keep)."""
    if set(reference) != set(candidate):
        return False
    for name, a in reference.items():
        b = candidate[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            atol, rtol = tolerance(a.dtype, device_class)
            if not bool(torch.isclose(a.double(), b.double(), rtol=rtol, atol=atol).all()):
                return False
            if bool((a.isnan() != b.isnan()).any()):
                return False
        elif not torch.equal(a, b):
            return False
    return True


def both(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], device_class: str) -> bool:
    """The torch verdict, after checking the numpy one (read from the tensors' bytes) agrees."""
    expected = torch_rows_match(reference, candidate, device_class)
    got = rows_match(arrays_from_bytes(save(reference)), arrays_from_bytes(save(candidate)), device_class)
    assert got == expected, (reference, candidate, device_class)
    return expected


def nudged(t: torch.Tensor, gen: torch.Generator, most: int, share: float) -> torch.Tensor:
    """t with a share of its elements moved by up to `most` units in the last place (their bits)."""
    bits = BITS[t.element_size()]
    raw = t.clone().view(bits)
    step = torch.randint(-most, most + 1, raw.shape, generator=gen).to(bits)
    mask = torch.rand(raw.shape, generator=gen) < share
    return (raw + torch.where(mask, step, torch.zeros_like(step))).view(t.dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_floats_decide_as_torch_did_over_random_bits(dtype: torch.dtype) -> None:
    """Random bit patterns hold every kind of value: NaN, ±inf, ±0, subnormals, the largest."""
    gen = torch.Generator().manual_seed(7)
    size = torch.finfo(dtype).bits // 8
    verdicts = set()
    for trial, device_class in itertools.product(range(60), CLASSES):
        raw = torch.randint(0, 256, (4, 5, size), generator=gen, dtype=torch.uint8)
        ref = raw.view(dtype).reshape(4, 5)
        if trial % 3 == 0:  # finite, ordinary values too, most of them close
            ref = (torch.randn(4, 5, generator=gen) * 10).to(dtype)
        cand = nudged(ref, gen, most=trial % 4, share=0.3 if trial % 2 else 0.05)
        verdicts.add(both({"y": ref}, {"y": cand}, device_class))
    assert verdicts == {True, False}  # both verdicts were reached


@pytest.mark.parametrize("dtype", FLOATS[:4], ids=str)
def test_floats_near_the_tolerance_decide_as_torch_did(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    for device_class, scale in itertools.product(CLASSES, (1e-9, 1e-6, 1e-4, 1e-3, 1e-2, 5e-2, 0.3)):
        ref = torch.randn(64, 8, generator=gen, dtype=torch.float64).to(dtype)
        noise = torch.randn(ref.shape, generator=gen, dtype=torch.float64) * scale
        both({"y": ref}, {"y": (ref.double() + noise).to(dtype)}, device_class)
        both({"y": ref}, {"y": (ref.double() * (1 + noise)).to(dtype)}, device_class)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_special_values_decide_as_torch_did(dtype: torch.dtype) -> None:
    nan, inf = float("nan"), float("inf")
    fin = torch.finfo(dtype)
    values = [0.0, -0.0, 1.0, fin.tiny, fin.tiny / 2, fin.max, -fin.max, inf, -inf, nan]
    for a, b in itertools.product(values, repeat=2):
        ref, cand = torch.tensor([a, 1.0]).to(dtype), torch.tensor([b, 1.0]).to(dtype)
        for device_class in CLASSES:
            both({"y": ref}, {"y": cand}, device_class)
    same_nan = torch.tensor([nan, 1.0]).to(dtype)
    assert not both({"y": same_nan}, {"y": same_nan.clone()}, "cpu")  # a NaN never matches, as before


def test_bfloat16_values_a_last_bit_apart() -> None:
    ref = torch.tensor([1.0, 3.14159, -250.0, 1e-30, 6e4], dtype=torch.bfloat16)
    up = (ref.view(torch.int16) + 1).view(torch.bfloat16)
    assert up.tolist() != ref.tolist()
    for device_class in CLASSES:
        both({"y": ref}, {"y": up}, device_class)
    big = torch.tensor([3e38], dtype=torch.bfloat16)
    assert both({"y": big}, {"y": (big.view(torch.int16) + 1).view(torch.bfloat16)}, "cpu")


@pytest.mark.parametrize("dtype", EXACT, ids=str)
def test_exact_dtypes_decide_as_torch_did(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    if dtype == torch.complex64:
        ref = torch.randn(6, 3, generator=gen, dtype=dtype)
        ref[0, 0] = complex(-0.0, 0.0)
    elif dtype == torch.bool:
        ref = torch.rand(6, 3, generator=gen) < 0.5
    else:
        info = torch.iinfo(dtype)
        ref = torch.randint(max(info.min, -(2**62)), min(info.max, 2**62), (6, 3), generator=gen).to(dtype)
        ref.view(BITS[ref.element_size()])[0, :2] = (
            torch.tensor([0, -1]) if info.min == 0 else torch.tensor([info.min, info.max])
        )
    assert both({"y": ref}, {"y": ref.clone()}, "cpu")
    other = ref.clone()
    if dtype == torch.bool:
        other[5, 2] = ~other[5, 2]
    else:  # through a signed view: torch has no arithmetic on its unsigned 16/32/64-bit types
        other.view(BITS[other.element_size()])[5, 2] += 1
    assert not both({"y": ref}, {"y": other}, "cuda")
    if dtype == torch.complex64:
        assert both({"y": ref}, {"y": torch.where(ref == 0, complex(0.0, 0.0), ref)}, "cpu")  # -0 == 0
        nan = ref.clone()
        nan[1, 1] = complex(float("nan"), 0.0)
        assert not both({"y": nan}, {"y": nan.clone()}, "cpu")


def test_a_bool_byte_other_than_one_reads_as_true_as_in_torch() -> None:
    data = bytearray(save({"y": torch.tensor([True, False])}))
    data[-2] = 2  # safetensors bytes a node may send: torch reads any non-zero byte as True
    theirs = arrays_from_bytes(bytes(data))
    assert rows_match(arrays_from_bytes(save({"y": torch.tensor([True, False])})), theirs)


def test_names_shapes_and_dtypes_must_agree() -> None:
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    cases = [
        {"z": x},
        {"y": x, "z": x.clone()},
        {"y": x.reshape(3, 2)},
        {"y": x.reshape(1, 2, 3)},
        {"y": x.double()},
        {"y": x.half()},
        {"y": x.to(torch.int32)},
        {"y": x[:1]},
    ]
    for candidate in cases:
        assert not both({"y": x}, candidate, "cpu")
    assert both({"y": x, "s": torch.tensor(2.0)}, {"s": torch.tensor(2.0), "y": x.clone()}, "cpu")
    assert both({"y": x[:0]}, {"y": x[:0]}, "cpu") and both({}, {}, "cpu")
