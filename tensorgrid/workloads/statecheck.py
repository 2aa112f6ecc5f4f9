"""Refuse inference programs that write to their own parameters, buffers or constants.

torch.export keeps in-place operators (add_, copy_, index_put_, ...) in the graph, so a
program can change its own state on every call: `self.calls.add_(1); return x * self.calls`.
A node keeps a program loaded across tasks, so such a program answers the same rows
differently on each call and no spot-check could ever agree with it. We follow torch's own
alias annotations (the `Tensor(a!)` of an operator schema) from the program's state through
views to any in-place write. Writes to intermediate tensors and to the program's own inputs
are fine: a batch's input rows belong to that batch alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tensorgrid.workloads.optable import Schema, schema

__all__ = ["state_writes"]

_STATE_SPECS = ("parameter", "buffer", "tensor_constant")


def state_writes(graph_module: Any) -> list[str]:
    """Names of the program's state tensors that one of its operators writes to, in graph order."""
    aliases: dict[str, str] = {}  # tensor name -> the state tensor it may alias
    for spec in _specs(graph_module):
        for kind in _STATE_SPECS:
            entry = spec.get(kind) if isinstance(spec, dict) else None
            if isinstance(entry, dict):
                name = (entry.get("arg") or {}).get("name")
                if isinstance(name, str):
                    aliases[name] = str(entry.get("parameter_name") or entry.get("buffer_name") or name)
    written: list[str] = []
    for node in _nodes(graph_module):
        _follow(node, aliases, written)
    return written


def _specs(graph_module: Any) -> list[Any]:
    signature = graph_module.get("signature") if isinstance(graph_module, dict) else None
    specs = signature.get("input_specs") if isinstance(signature, dict) else None
    return specs if isinstance(specs, list) else []


def _nodes(graph_module: Any) -> list[Any]:
    graph = graph_module.get("graph") if isinstance(graph_module, dict) else None
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    return nodes if isinstance(nodes, list) else []


def _follow(node: Any, aliases: dict[str, str], written: list[str]) -> None:
    if not isinstance(node, dict):
        return
    target, inputs = node.get("target"), node.get("inputs")
    if not isinstance(inputs, list):
        return
    if target == "_operator.getitem":
        reached = [aliases[n] for item in inputs for n in _tensor_names(item) if n in aliases]
        annotated_reached = reached
    else:
        found = _schema(target)
        if found is None:
            return
        annotated_reached = []
        for item in inputs:
            writes = found.aliases.get(str(item.get("name"))) if isinstance(item, dict) else None
            if writes is None:
                continue
            state = [aliases[n] for n in _tensor_names(item) if n in aliases]
            if writes:
                written.extend(s for s in state if s not in written)
            annotated_reached.extend(state)
    if annotated_reached:  # an output may be a view of that state: follow it
        for name in _tensor_names(node.get("outputs")):
            aliases.setdefault(name, annotated_reached[0])


def _schema(target: Any) -> Schema | None:
    if not isinstance(target, str) or not target.startswith("torch.ops.aten."):
        return None
    parts = target.split(".")
    if len(parts) != 5:
        return None
    return schema(parts[3], parts[4])


def _tensor_names(obj: Any, under_tensor: bool = False) -> Iterator[str]:
    """Names of the tensors an argument or output payload refers to (as_tensor, as_tensors, optional forms)."""
    stack: list[tuple[Any, bool]] = [(obj, under_tensor)]
    while stack:
        item, tensorish = stack.pop()
        if isinstance(item, dict):
            if tensorish and isinstance(item.get("name"), str):
                yield item["name"]
            for key, value in item.items():
                stack.append((value, tensorish or "tensor" in key))
        elif isinstance(item, list):
            stack.extend((value, tensorish) for value in item)
