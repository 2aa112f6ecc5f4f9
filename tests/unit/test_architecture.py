"""The architecture holds: no import cycles, the coordinator's layers point one way, the daemons
stay apart, and job kinds are the registry's to name.

Imports are read with ast, not by importing anything. Every import statement counts: at
module level, inside a function, under `if TYPE_CHECKING:` — an import hidden in a function
or a type-checking block still ties the modules together (and hiding one to dodge a cycle is
the habit this test exists to stop). Importing `a.b.c` also runs the `__init__` of `a` and
`a.b`, so those count as imported too. Generated code (`*_pb2*.py`) is left out.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coordinator", "node", "tensorgrid")

# The coordinator's layers, lowest first: a module may import its own layer and those below.
# Leaves (plain values and tiny helpers every layer uses) come first and import no other layer.
LEAVES = ("coordinator", "coordinator.errors", "coordinator.config", "coordinator.events", "coordinator.commits")
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaves", LEAVES),
    ("db", ("coordinator.db",)),
    ("repositories", ("coordinator.repositories",)),
    ("services", ("coordinator.services",)),
    ("kinds", ("coordinator.kinds",)),
    ("api", ("coordinator.api",)),
    ("app", ("coordinator.app",)),
    (
        "main",
        (
            "coordinator.main",
            "coordinator.console",
            "coordinator.settings",
            "coordinator.settings_network",
            "coordinator.settings_peers",
            "coordinator.settings_reviews",
            "coordinator.daemon",
        ),
    ),
)

# Inside the repositories layer, domains build on each other in this order (never back): a
# caught node's slash is the ledger's, a job's completion waits on its checks, and so on.
REPOSITORY_ORDER = (
    "locks",
    "ledger",
    "jobs",
    "sessions",
    "nodes",
    "claim_devices",
    "claims",
    "limit_claims",
    "leasing",
    "heartbeats",
    "tasks",
    "reviews",
    "results",
    "verification",
    "training",
    "blobs",
    "store",
)


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: set[str] = field(default_factory=set)  # own modules this one runs when imported


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join(parts)] = Module(".".join(parts), path, is_package)
    for mod in found.values():
        mod.imports = _imports(mod, found)
    return found


def _parents(name: str, found: dict[str, Module]) -> list[str]:
    parts = name.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in found and found[p].is_package]


def _resolve(target: str, found: dict[str, Module]) -> list[str]:
    """The own modules that importing `target` runs: its longest own prefix and that one's packages."""
    while target and target not in found:
        target = target.rpartition(".")[0]
    return [target, *_parents(target, found)] if target else []


def _imports(mod: Module, found: dict[str, Module]) -> set[str]:
    tree = ast.parse(mod.path.read_text(), str(mod.path))
    base = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    enclosing = set(_parents(mod.name, found))  # run before the module anyway: not an import of it
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                full = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                full = node.module or ""
            targets = [full, *(f"{full}.{a.name}" for a in node.names)]
        for target in targets:
            out.update(r for r in _resolve(target, found) if r != mod.name and r not in enclosing)
    return out


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = {name: sorted(mod.imports) for name, mod in modules().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(graph[start]))]
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def layer_of(name: str) -> int | None:
    """Rank of the coordinator layer `name` belongs to (the longest prefix wins); None outside it."""
    best: tuple[int, int] | None = None  # (prefix length, rank)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix in LEAVES
            if name == prefix or (not exact_only and name.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    return None if best is None else best[1]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package: str) -> None:
    mine = [c for c in cycles() if any(m == package or m.startswith(package + ".") for m in c)]
    assert not mine, "import cycles:\n" + "\n".join(f"  {len(c)} modules: {', '.join(c)}" for c in mine)


def test_every_coordinator_module_has_a_layer() -> None:
    unplaced = [name for name in modules() if name.startswith("coordinator") and layer_of(name) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS or LEAVES): {unplaced}"


def test_coordinator_layers_point_down() -> None:
    """api → kinds → services → repositories → db → leaves; never the other way."""
    upward = []
    for name, mod in modules().items():
        rank = layer_of(name)
        if rank is None:
            continue
        for imported in sorted(mod.imports):
            other = layer_of(imported)
            if other is not None and other > rank:
                upward.append(f"  {name} ({LAYERS[rank][0]}) imports {imported} ({LAYERS[other][0]})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_repositories_build_on_each_other_in_one_order() -> None:
    def rank(name: str) -> int | None:
        parts = name.split(".")
        if parts[:2] != ["coordinator", "repositories"] or len(parts) < 3:
            return None
        return REPOSITORY_ORDER.index(parts[2])

    backward = [
        f"  {name} imports {imported}"
        for name, mod in modules().items()
        for imported in sorted(mod.imports)
        if (mine := rank(name)) is not None and (theirs := rank(imported)) is not None and theirs > mine
    ]
    assert not backward, f"repositories importing against {REPOSITORY_ORDER}:\n" + "\n".join(backward)


def test_the_shared_core_and_the_node_stay_apart_from_the_daemons() -> None:
    forbidden = {"tensorgrid": ("coordinator", "node"), "node": ("coordinator",)}
    wrong = [
        f"  {name} imports {imported}"
        for name, mod in modules().items()
        for imported in sorted(mod.imports)
        if imported.split(".")[0] in forbidden.get(name.split(".")[0], ())
    ]
    assert not wrong, "the shared core imports a daemon, or the node the coordinator:\n" + "\n".join(wrong)


def test_job_kinds_are_named_only_by_their_packages() -> None:
    """Outside coordinator/kinds, no code compares a kind with a literal name: the registry answers."""
    literal = re.compile(r"""(?<!\w)kind\s*(?:==|!=)\s*["']|["']\s*(?:==|!=)\s*[\w.]*(?<!_)kind\b""")
    found = [
        f"  {mod.path.relative_to(ROOT)}:{i}: {line.strip()}"
        for name, mod in modules().items()
        if name.startswith("coordinator") and not name.startswith("coordinator.kinds")
        for i, line in enumerate(mod.path.read_text().splitlines(), start=1)
        if literal.search(line)
    ]
    assert not found, "kind names compared outside the kind packages:\n" + "\n".join(found)
