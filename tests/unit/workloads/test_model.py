from __future__ import annotations

import contextlib
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tensorgrid.errors import UnsafeFileError
from tensorgrid.workloads.model import check_program, export_program, load_program


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    module = _mlp()
    path = tmp_path_factory.mktemp("prog") / "mlp.pt2"
    export_program(module, (torch.randn(4, 64),), path)
    return module, path


def _rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes]) -> Path:
    """Copy a .pt2 archive entry by entry; edit(rel, data) returns new bytes or None to drop."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            data = edit(name[len(root) + 1 :], zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        for rel, data in add.items():
            zout.writestr(f"{root}/{rel}", data)
    return dst


def _edit_json(target: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes | None]:
    def edit(rel: str, data: bytes) -> bytes:
        if rel != target:
            return data
        obj = json.loads(data)
        change(obj)
        return json.dumps(obj).encode()

    return edit


class _Boom:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_export_load_run_matches_original(program: tuple[torch.nn.Module, Path]) -> None:
    module, path = program
    info = check_program(path)
    assert info.weights == 4 and info.constants == 0
    assert "torch.ops.aten.linear.default" in info.operators
    loaded = load_program(path, "cpu")
    x = torch.randn(9, 64)  # a batch size other than the example's: dim 0 is dynamic
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))


def test_malicious_sample_inputs_are_never_unpickled(program: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Boom(marker), protocol=2)
    evil = _rewrite(
        program[1],
        tmp_path / "evil.pt2",
        lambda rel, data: payload if rel == "data/sample_inputs/model.pt" else data,
        {},
    )
    module = load_program(evil, "cpu")
    assert module(torch.randn(3, 64)).shape == (3, 4)
    assert not marker.exists()
    # Control: plain torch.export.load does run the payload (then fails), so the test above
    # means something.
    with contextlib.suppress(Exception):
        torch.export.load(evil)
    assert marker.exists()


def test_use_pickle_weight_is_refused(program: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    def pickled(obj: dict) -> None:
        next(iter(obj["config"].values()))["use_pickle"] = True

    edit = _edit_json("data/weights/model_weights_config.json", pickled)
    bad = _rewrite(program[1], tmp_path / "bad.pt2", edit, {})
    with pytest.raises(UnsafeFileError, match="pickle"):
        check_program(bad)
    with pytest.raises(UnsafeFileError):
        load_program(bad, "cpu")


def test_opaque_constant_is_refused(program: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    def opaque(obj: dict) -> None:
        obj["config"]["c"] = {"path_name": "opaque_obj_0", "use_pickle": False, "tensor_meta": {}}

    bad = _rewrite(
        program[1],
        tmp_path / "bad.pt2",
        _edit_json("data/constants/model_constants_config.json", opaque),
        {},
    )
    with pytest.raises(UnsafeFileError, match="opaque"):
        check_program(bad)


@pytest.mark.parametrize(
    "extra",
    [
        "data/weights/model.pt",
        "extra/notes.txt",
        "data/aotinductor/model/x.so",
        "data/constants/custom_obj_0",
        "data.pkl",
    ],
)
def test_unexpected_entries_are_refused(program: tuple[torch.nn.Module, Path], tmp_path: Path, extra: str) -> None:
    bad = _rewrite(program[1], tmp_path / "bad.pt2", lambda rel, data: data, {extra: b"\x80\x02N."})
    with pytest.raises(UnsafeFileError, match="not allowed|torch.save"):
        check_program(bad)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m["graph_module"]["graph"]["nodes"][0].update(target="torch.os.system"), "not an aten operator"),
        (
            lambda m: m["graph_module"]["graph"]["nodes"][0].update(target="torch.ops.aten.from_file.default"),
            "read or write files",
        ),
        (lambda m: m.update(guards_code=["__import__('os').system('true')"]), "guard"),
        (lambda m: m.update(guards_code=["L['x'].size()[0] == 2", "L['x'].__class__ == 1"]), "guard"),
        (lambda m: m.update(guards_code=["L['x'].size()[0] == len('a')"]), "guard"),
        (
            lambda m: m["graph_module"]["graph"]["nodes"][0]["outputs"].append(
                {"as_sym_int": {"as_expr": {"expr_str": "__import__('os').system('true')"}}}
            ),
            "vocabulary",
        ),
        (
            lambda m: m["graph_module"]["graph"]["nodes"][0]["outputs"].append(
                {"as_sym_int": {"as_expr": {"expr_str": "exec(chr(49))"}}}
            ),
            "vocabulary",
        ),
    ],
)
def test_graph_that_would_run_code_is_refused(
    program: tuple[torch.nn.Module, Path], tmp_path: Path, change: Callable[[dict], None], match: str
) -> None:
    bad = _rewrite(program[1], tmp_path / "bad.pt2", _edit_json("models/model.json", change), {})
    with pytest.raises(UnsafeFileError, match=match):
        check_program(bad)


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.save(_mlp(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match="torch.export.save"):
        check_program(path)
    path.write_bytes(b"hello")
    with pytest.raises(UnsafeFileError, match="not a torch.export program"):
        load_program(path, "cpu")


def test_torch_save_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.save(_mlp().state_dict(), path)
    with pytest.raises(UnsafeFileError, match="torch.save"):
        check_program(path)


def test_zip_that_is_not_a_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(UnsafeFileError):
        check_program(path)


def test_size_limit(program: tuple[torch.nn.Module, Path]) -> None:
    with pytest.raises(UnsafeFileError, match="limit"):
        check_program(program[1], max_bytes=1000)
