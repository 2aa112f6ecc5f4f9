"""Which aten operators a program may call, and why some may not.

Every aten operator is allowed unless aten_ops.txt (next to this file, one line per operator
torch registers) puts it in a denied group. The groups and their reasons live here:

  files                 reads or writes files on the machine that runs it (torch.from_file)
  unchecked-memory      builds tensors over memory without checking bounds or invariants:
                        sparse and nested constructors (torch skips their index checks unless
                        asked), aliasing views that skip the storage check (_reshape_alias),
                        set_, _unsafe_index*, and fbgemm's packed native structures; each can
                        read or corrupt memory outside the tensor
  process               changes state of the process that runs it and outlives the task:
                        pinned host memory, cuFFT plan caches, stream bookkeeping, printing
  random                draws random numbers. Refused in inference programs: a spot-check or
                        the referee re-runs rows and must get the node's result, so an
                        inference result must be a function of its row. Training programs
                        keep them: the inner loop reseeds torch's generator every step from
                        the task's seed, so a checker replays the same draws.
  random-when-training  random only with a true train/training flag or a non-zero dropout
                        probability (dropout family, rrelu, RNNs, attention with dropout_p):
                        an eval-mode export passes train=False / dropout_p=0.0 and is accepted

Operators outside aten (custom namespaces, prims, quantized, c10d collectives, higher-order
ops) are refused unless graphcheck names them: only Python's operator/math helpers and
torch.sym_* functions that torch emits for symbolic sizes are.

Considered and allowed: _local_scalar_dense (Tensor.item inside a graph) only turns a tensor
element into a symbolic int in the same process; _assert_* ops only raise; empty/resize_
return uninitialized memory, which the worker's process isolation bounds (not this check).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from tensorgrid.workloads.optable import schema, torch_version

__all__ = [
    "GATED",
    "GROUPS",
    "Purpose",
    "classification",
    "refusal",
]

Purpose = Literal["inference", "training"]
PURPOSES: tuple[Purpose, ...] = ("inference", "training")

_ALL: frozenset[str] = frozenset(PURPOSES)
_RANDOM_REASON = "random operators are refused in inference programs: results could not be checked"


@dataclass(frozen=True)
class Group:
    """A denied group of operators: the programs it is refused in and why."""

    key: str
    reason: str
    refused_in: frozenset[str]
    hint: str = ""


GROUPS: dict[str, Group] = {
    g.key: g
    for g in (
        Group("files", "operators that read or write files are refused: programs may not touch the node's disk", _ALL),
        Group(
            "unchecked-memory",
            "operators that build tensors over unchecked memory (unvalidated sparse or nested indices, aliasing "
            "views without bounds checks, packed native structures) are refused: they can read or corrupt "
            "memory outside the tensor",
            _ALL,
        ),
        Group(
            "process",
            "operators that change the state of the process running them (pinned host memory, library "
            "caches, streams, printing) are refused: that state outlives the task",
            _ALL,
        ),
        Group(
            "random",
            _RANDOM_REASON,
            frozenset({"inference"}),
            "; draw random numbers outside the program and pass them as inputs, or submit a training job",
        ),
        Group(
            "random-when-training",
            _RANDOM_REASON,
            frozenset({"inference"}),
            "; export the model in eval mode (model.eval()) so dropout is off",
        ),
    )
}

# For each random-when-training operator: the flag that turns randomness on (None: always
# on) and the probability argument whose 0.0 turns it off (None: no such argument).
_GATE_RULES: tuple[tuple[str | None, str | None, str], ...] = (
    (
        "train",
        "p",
        "dropout dropout_ feature_dropout feature_dropout_ alpha_dropout alpha_dropout_ feature_alpha_dropout "
        "feature_alpha_dropout_ native_dropout",
    ),
    ("training", None, "rrelu rrelu_ rrelu_with_noise rrelu_with_noise_ rrelu_with_noise_functional"),
    ("train", "dropout", "lstm gru rnn_tanh rnn_relu quantized_lstm quantized_gru _cudnn_rnn miopen_rnn _lstm_mps"),
    (
        None,
        "dropout_p",
        "scaled_dot_product_attention _scaled_dot_product_flash_attention _scaled_dot_product_flash_attention_for_cpu "
        "_scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention "
        "_scaled_dot_product_attention_math _scaled_dot_product_attention_math_for_mps "
        "_scaled_dot_product_fused_attention_overrideable "
        "_efficient_attention_forward _flash_attention_forward _cudnn_attention_forward _triton_scaled_dot_attention "
        "_flash_attention_forward_no_dropout_inplace",
    ),
)
GATED: dict[str, tuple[str | None, str | None]] = {
    name: (flag, prob) for flag, prob, names in _GATE_RULES for name in names.split()
}


@functools.cache
def classification() -> dict[str, str]:
    """aten_ops.txt as {operator name: verdict} ("allow" or a GROUPS key)."""
    text = resources.files("tensorgrid.workloads").joinpath("aten_ops.txt").read_text(encoding="utf-8")
    verdicts: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, verdict = line.partition(" ")
        if verdict != "allow" and verdict not in GROUPS:
            raise ValueError(f"aten_ops.txt line {number}: unknown verdict {verdict!r}")
        verdicts[name] = verdict
    return verdicts


def refusal(name: str, overload: str, inputs: Any, purpose: Purpose) -> str | None:
    """Why aten.<name>.<overload>, called with these serialized inputs, is refused (None: allowed)."""
    verdict = classification().get(name)
    target = f"aten.{name}.{overload}"
    if verdict is None:
        return (
            f"operator {target} is not classified for torch {torch_version()} (tensorgrid/workloads/aten_ops.txt), "
            "so it is refused"
        )
    group = GROUPS.get(verdict)
    if group is None or purpose not in group.refused_in:
        return None
    if verdict == "random-when-training" and not _randomness_on(name, overload, inputs):
        return None
    detail = _why_random(name, inputs) if verdict == "random-when-training" else ""
    return f"{group.reason} ({target}{detail}){group.hint}"


def _randomness_on(name: str, overload: str, inputs: Any) -> bool:
    """False only when the call's flag is a constant false or its probability a constant 0."""
    flag, prob = GATED[name]
    found = schema(name, overload)
    defaults = found.defaults if found is not None else {}
    if flag is not None and _constant(inputs, flag, "as_bool", defaults) is False:
        return False
    return not (prob is not None and _constant(inputs, prob, "as_float", defaults) == 0.0)


def _why_random(name: str, inputs: Any) -> str:
    flag, prob = GATED[name]
    shown = [f"{n}={_shown(inputs, n)}" for n in (flag, prob) if n is not None]
    return f" with {', '.join(shown)}"


def _argument(inputs: Any, name: str) -> Any:
    if isinstance(inputs, list):
        for item in inputs:
            if isinstance(item, dict) and item.get("name") == name:
                return item.get("arg")
    return None


def _constant(inputs: Any, name: str, kind: str, defaults: dict[str, Any]) -> Any:
    """The argument's constant value, its schema default when absent, or None (symbolic/unknown)."""
    arg = _argument(inputs, name)
    if arg is None:
        return defaults.get(name)
    if not isinstance(arg, dict) or set(arg) != {kind}:
        return None
    value = arg[kind]
    if kind == "as_bool":
        return value if isinstance(value, bool) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _shown(inputs: Any, name: str) -> str:
    arg = _argument(inputs, name)
    if isinstance(arg, dict) and len(arg) == 1:
        return str(next(iter(arg.values())))[:40]
    return "default"
