"""generation: prompts (token ids) through an exported decoder; nodes run the decoding loop.

The decoding settings are data: how many tokens, greedy or sampled (temperature, top-k,
top-p) from a job seed each prompt's own seed derives from, and which tokens stop a prompt.
See tensorgrid.workloads.generation for the loop and docs/GENERATION.md for the formats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tensorgrid.errors import SpecError
from tensorgrid.spec.base import JobSpecBase
from tensorgrid.spec.checks import Decoder, as_float, blob_ref, check_int, check_number, is_int, optional
from tensorgrid.spec.verification import VerificationSpec, check_policy, decode_verification
from tensorgrid.types import BlobRef

MAX_STOP_TOKENS = 64
MAX_VOCAB = 10_000_000
MIN_TEMPERATURE = 1e-3


def stop_tokens_of(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(is_int(v) for v in value):
        raise SpecError(f"{name} must be a list of token ids (integers)")
    return tuple(value)


def check_decoding(vocab_size: int, temperature: float, top_k: int, top_p: float, stop_tokens: tuple[int, ...]) -> None:
    """The decoding settings' checks, shared by generation jobs and generation endpoints."""
    check_number("temperature", temperature, 0.0, 100.0, ints=True)
    if 0 < temperature < MIN_TEMPERATURE:  # logits / temperature would overflow float32
        raise SpecError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature}")
    check_number("top_p", top_p, 0.0, 1.0, lo_open=True, ints=True)
    if temperature == 0 and (top_k or top_p != 1.0):
        raise SpecError("top_k and top_p apply to sampling: set temperature > 0, or leave them off for greedy")
    if not isinstance(stop_tokens, tuple) or len(stop_tokens) > MAX_STOP_TOKENS:
        raise SpecError(f"stop_tokens must be a list of at most {MAX_STOP_TOKENS} token ids")
    for token in stop_tokens:
        check_int("stop_tokens[]", token, 0, vocab_size - 1)
    if top_k > vocab_size:
        raise SpecError(f"top_k ({top_k}) is larger than the vocabulary ({vocab_size})")


@dataclass(frozen=True, kw_only=True)
class GenerationSpec(JobSpecBase):
    """Generate up to max_new_tokens after each prompt of a safetensors prompt file.

    prompts: `tokens` [N, Tmax] int64 and `lengths` [N] int64. model: a torch.export program
    taking tokens [B, T] int64 and returning logits [B, T, vocab_size]. temperature 0 decodes
    greedily (top_k and top_p must stay off); above 0 it samples, prompt i from its own
    generator seeded from (seed, i). A prompt stops after emitting one of stop_tokens.
    """

    model: BlobRef
    prompts: BlobRef
    vocab_size: int
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_tokens: tuple[int, ...] = ()
    shard_prompts: int = 64
    batch_size: int = 0
    kind: str = "generation"
    verification: VerificationSpec | None = None  # None: the default policy

    DECODERS: ClassVar[Mapping[str, Decoder]] = {
        "model": blob_ref,
        "prompts": blob_ref,
        "temperature": as_float,
        "top_p": as_float,
        "stop_tokens": stop_tokens_of,
        "verification": optional(decode_verification),
    }
    INT_RANGES: ClassVar[Mapping[str, tuple[int, int]]] = {
        "vocab_size": (1, MAX_VOCAB),
        "max_new_tokens": (1, 100_000),
        "top_k": (0, MAX_VOCAB),
        "seed": (0, 2**63 - 1),
        "shard_prompts": (1, 1_000_000),
        "batch_size": (0, 1_000_000),
    }

    def validate(self) -> None:
        super().validate()
        check_decoding(self.vocab_size, self.temperature, self.top_k, self.top_p, self.stop_tokens)
        check_policy(self.verification)

    def decode_settings(self) -> dict[str, Any]:
        """The settings the decoding loop takes (tensorgrid.workloads.generation.DecodeSettings)."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "vocab_size": self.vocab_size,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop_tokens": list(self.stop_tokens),
            "batch_size": self.batch_size,
        }
