"""What the serving worker computes (child process only: imports torch).

Inference: a micro-batch's requests are checked one by one (strict safetensors checks on
bytes), those whose tensors agree in names, dtypes and trailing shapes are concatenated along
dim 0 and run in one forward pass, and the outputs are cut back by each request's row count.
A request that fails its checks gets its own error; if a shared forward pass fails, its
requests are run one by one so one bad request cannot fail its neighbours.

Generation: one prompt per request, decoded with the endpoint's settings and the request's
seed (as prompt 0 of a job seeded so: the tokens run_generation gives for a one-prompt file),
each step's new token handed to a callback as it is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tensorgrid.errors import InvalidTensorFile, SpecError
from tensorgrid.serving import tensors_from_bytes, tensors_to_bytes
from tensorgrid.workloads import inference
from tensorgrid.workloads.checked import CheckedProgram
from tensorgrid.workloads.generation import DecodeSettings, check_prompts, decode, prompt_seed

__all__ = ["Failure", "Served"]


@dataclass(frozen=True)
class Failure:
    """A request that failed: the exception it raised (the worker classifies it)."""

    error: BaseException


Result = bytes | Failure
_Key = tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]


class Served:
    """A replica's loaded program and settings (settings_json: EndpointSpec.replica_settings())."""

    def __init__(self, model_path: str, serves: str, settings: Mapping[str, Any], device: str = "auto") -> None:
        if serves not in ("inference", "generation"):
            raise SpecError(f"unknown serves {serves!r}; expected inference or generation")
        self.serves = serves
        self.device = inference.pick_device(device)
        names = settings.get("input_names") or []
        self.input_names: list[str] | None = [str(n) for n in names] or None
        self.decode: DecodeSettings | None = None
        if serves == "generation":
            if not isinstance(settings.get("generation"), dict):
                raise SpecError("a generation replica needs its decoding settings")
            self.decode = DecodeSettings.from_dict(settings["generation"])
        # inference.load_program is the warm-program LRU in the worker (node.worker.prepare).
        self.module = inference.load_program(model_path, self.device)
        # a micro-batch's forward pass checks its input shapes once per signature, not per call
        self.program = CheckedProgram(self.module)

    # ---- inference ------------------------------------------------------------------------------
    def run_batch(self, payloads: list[bytes]) -> list[Result]:
        """One output (safetensors bytes) or Failure per request, in order."""
        results: list[Result | None] = [None] * len(payloads)
        groups: dict[_Key, list[tuple[int, list[torch.Tensor]]]] = {}
        for i, payload in enumerate(payloads):
            try:
                named = self._inputs(payload, f"request {i}")
            except Exception as exc:  # a hostile or malformed request fails alone
                results[i] = Failure(exc)
                continue
            key = tuple((n, t.dtype, tuple(t.shape[1:])) for n, t in named)
            groups.setdefault(key, []).append((i, [t for _, t in named]))
        for members in groups.values():
            outputs: list[Result]
            try:
                outputs = list(self._forward([inputs for _, inputs in members]))
            except Exception as exc:
                if len(members) == 1:
                    results[members[0][0]] = Failure(exc)
                    continue
                outputs = [self._one(inputs) for _, inputs in members]  # find the one that fails
            for (i, _), out in zip(members, outputs, strict=True):
                results[i] = out
        return [r if r is not None else Failure(RuntimeError("no result")) for r in results]

    def _inputs(self, payload: bytes, name: str) -> list[tuple[str, torch.Tensor]]:
        """The request's checked tensors in the program's argument order, with their names."""
        tensors = tensors_from_bytes(payload, name=name)
        names = sorted(tensors) if self.input_names is None else self.input_names
        missing = [n for n in names if n not in tensors]
        if missing:
            raise InvalidTensorFile(f"{name}: no tensor named {missing[0]!r} (it has {sorted(tensors)})")
        rows = {tensors[n].shape[0] if tensors[n].ndim else -1 for n in names}
        if len(rows) != 1 or min(rows) < 1:
            raise InvalidTensorFile(f"{name}: its tensors need the same number of rows (≥ 1) on dim 0")
        return [(n, tensors[n]) for n in names]

    def _forward(self, batch: list[list[torch.Tensor]]) -> list[bytes]:
        rows = [inputs[0].shape[0] for inputs in batch]
        # a lone request's tensors go in as they are (torch.cat would copy them)
        joined = [
            (column[0] if len(column) == 1 else torch.cat(column)).to(self.device)
            for column in zip(*batch, strict=True)
        ]
        with torch.no_grad():
            named = inference.forward_rows(self.program, joined)
        parts = {key: value.to("cpu").split(rows) for key, value in named.items()}
        return [tensors_to_bytes({key: pieces[j] for key, pieces in parts.items()}) for j in range(len(rows))]

    def _one(self, inputs: list[torch.Tensor]) -> Result:
        try:
            return self._forward([inputs])[0]
        except Exception as exc:
            return Failure(exc)

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, payload: bytes, seed: int, on_tokens: Callable[[list[int]], None]) -> bytes:
        """Decode one prompt; on_tokens gets each step's new token; the output's bytes
        ({"tokens", "logprobs", "lengths"}, as run_generation writes for one prompt)."""
        if self.decode is None:
            raise SpecError("this replica serves inference, not generation")
        tensors = dict(tensors_from_bytes(payload, name="prompt"))
        tokens = tensors.get("tokens")
        if isinstance(tokens, torch.Tensor) and tokens.ndim == 1:  # a bare prompt: [T]
            tensors["tokens"] = tokens = tokens[None, :]
            tensors.setdefault("lengths", torch.tensor([tokens.shape[1]], dtype=torch.int64))
        if check_prompts(tensors, self.decode.vocab_size, submitted=True) != 1:
            raise InvalidTensorFile("a generation request holds exactly one prompt")
        lengths = tensors["lengths"]
        prompt = tensors["tokens"][:, : int(lengths.max())]

        def step(_: int, __: torch.Tensor, chosen: torch.Tensor) -> None:
            on_tokens([int(t) for t in chosen.tolist()])

        seeds = torch.tensor([prompt_seed(seed, 0)], dtype=torch.int64)  # prompt 0 of a job seeded `seed`
        ids, logprobs, generated = decode(self.module, prompt, lengths, seeds, self.decode, self.device, on_step=step)
        return tensors_to_bytes({"tokens": ids, "logprobs": logprobs, "lengths": generated})
