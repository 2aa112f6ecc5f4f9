"""The one strict decoder of spec JSON and the value checks every spec kind shares.

Decoding refuses unknown fields (a typo must not silently become a default), converts the
fields that need it through per-field decoders, and says exactly which field is wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

from tensorgrid.digests import is_hex32
from tensorgrid.errors import SpecError
from tensorgrid.types import BlobRef

MAX_SPEC_BYTES = 64 * 1024

T = TypeVar("T")
# (qualified field name for messages, JSON value) -> the field's Python value
Decoder = Callable[[str, Any], Any]


def decode_spec_json(raw: bytes) -> Any:
    """The JSON value of a spec, within the size limit; SpecError otherwise."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"spec is {len(raw)} bytes; the limit is {MAX_SPEC_BYTES}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"spec is not valid JSON: {e}") from None


def require_object(value: Any, what: str, example: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{what} must be an object{example}")
    return value


def refuse_unknown(data: Mapping[str, Any], cls: type, what: str) -> None:
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise SpecError(f"unknown field(s) in {what}: {', '.join(map(str, unknown))}")


def build(cls: type[T], data: Mapping[str, Any], what: str, decoders: Mapping[str, Decoder], prefix: str = "") -> T:
    """cls from decoded JSON: unknown fields refused, each field through its decoder (if it has one)."""
    refuse_unknown(data, cls, what)
    kwargs = {name: decoders[name](prefix + name, v) if name in decoders else v for name, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SpecError(f"incomplete {what}: {e}") from None


def blob_ref(name: str, value: Any) -> BlobRef:
    if not isinstance(value, dict) or set(value) != {"sha256", "size"}:
        raise SpecError(f"{name} must be an object with exactly 'sha256' and 'size'")
    if not is_hex32(value["sha256"]):
        raise SpecError(f"{name}.sha256: not a sha256 hex digest: {value['sha256']!r:.80}")
    if not is_int(value["size"]) or value["size"] < 0:
        raise SpecError(f"{name}.size must be a non-negative integer")
    return BlobRef(value["sha256"], value["size"])


def optional(decoder: Decoder) -> Decoder:
    """The decoder, letting JSON null through as None."""
    return lambda name, value: None if value is None else decoder(name, value)


def constant(expected: str) -> Decoder:
    def decode(name: str, value: Any) -> str:
        if value != expected:
            raise SpecError(f"{name} must be {expected!r}, got {value!r}")
        return expected

    return decode


def as_float(name: str, value: Any) -> float:
    # Ints are accepted and normalized so 1 and 1.0 give the same canonical bytes.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(f"{name} must be a finite number, got {value!r}")
    return float(value)


_WEI_DIGITS = re.compile(r"0|[1-9][0-9]{0,77}")


def wei(name: str, value: Any) -> Any:
    """A wei amount: a JSON integer, or the same integer as a decimal string ("1000000000000000000"),
    which a JavaScript client can write without losing digits past 2^53. The spec's hash is over the
    bytes sent, so either form signs as written; both parse to the same integer."""
    if isinstance(value, str):
        if not _WEI_DIGITS.fullmatch(value):
            raise SpecError(
                f"{name} must be a whole number of wei (a JSON integer or a decimal string), got {value!r:.80}"
            )
        return int(value)
    return value  # an integer (or anything else, refused by the range check)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not is_int(value) or not lo <= value <= hi:
        raise SpecError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def check_number(
    name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, ints: bool = False
) -> None:
    """value is a float (or, with ints, an int) in the interval; NaN and infinities never are."""
    ok = (
        (isinstance(value, float) or (ints and is_int(value)))
        and (value > lo if lo_open else value >= lo)
        and (value < hi if hi_open else value <= hi)
    )
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise SpecError(f"{name} must be a number in {interval}, got {value!r}")
