"""torch.export programs (.pt2): export on the submitter's side, vet and load on a node.

`torch.export.load` is not safe on untrusted files: it unpickles weights and constants
marked `use_pickle`, opaque and custom-object constants, legacy `data/weights/<m>.pt` files,
and falls back to `torch.load(weights_only=False)` on the sample inputs. Its graph
deserializer also evaluates strings (see graphcheck). So `check_program` vets the zip
without loading it, and `load_program` hands torch a rebuilt in-memory archive holding
only vetted entries, with the sample inputs emptied so no pickle is ever read.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensorgrid.errors import ExecutionError, UnsafeFileError
from tensorgrid.types import ErrorKind
from tensorgrid.workloads.graphcheck import check_graph_json
from tensorgrid.workloads.oppolicy import Purpose

if TYPE_CHECKING:  # vetting (check_program) needs no torch: the coordinator never imports it
    import torch

__all__ = [
    "MAX_PROGRAM_BYTES",
    "MAX_PROGRAM_ENTRIES",
    "ProgramInfo",
    "check_program",
    "export_program",
    "load_program",
]

MAX_PROGRAM_BYTES = 4 * 1024**3
MAX_PROGRAM_ENTRIES = 100_000
MAX_JSON_BYTES = 64 * 1024**2
_MODEL = "model"  # torch.export.save always names its one program "model"
_SAMPLE_INPUTS = f"data/sample_inputs/{_MODEL}.pt"
_WEIGHTS_CONFIG = f"data/weights/{_MODEL}_weights_config.json"
_CONSTANTS_CONFIG = f"data/constants/{_MODEL}_constants_config.json"
_MODEL_JSON = f"models/{_MODEL}.json"
_FIXED_ENTRIES: dict[str, bytes | None] = {  # expected content, None = any
    "archive_format": b"pt2",
    "archive_version": b"0",
    "byteorder": b"little",
    ".data/version": None,
    ".data/serialization_id": None,
    _MODEL_JSON: None,
    _WEIGHTS_CONFIG: None,
    _CONSTANTS_CONFIG: None,
    _SAMPLE_INPUTS: None,
}
_PAYLOAD_RE = re.compile(r"data/weights/weight_[0-9]+|data/constants/tensor_[0-9]+")
_ROOT_RE = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_EXPORT_HINT = "export with torch.export.export + torch.export.save"


@dataclass(frozen=True)
class ProgramInfo:
    """What check_program learned about a .pt2 archive without loading it."""

    root: str
    entries: int
    uncompressed_bytes: int
    weights: int
    constants: int
    operators: tuple[str, ...]


def export_program(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    dynamic_batch: bool = True,
) -> None:
    """Export `module` as a .pt2 program; with dynamic_batch, dim 0 of every input is dynamic.

    The program keeps the module's current train/eval mode: an exported module cannot switch
    modes later, so put it in the mode you want before exporting. Example inputs should have
    at least 2 rows, or torch specializes the batch size to 0/1.
    """
    import torch

    dynamic_shapes: tuple[dict[int, Any], ...] | None = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")  # one shared symbol: all inputs have the same rows
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    program = torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, os.fspath(path))


def check_program(
    path: str | os.PathLike[str], max_bytes: int = MAX_PROGRAM_BYTES, *, purpose: Purpose = "inference"
) -> ProgramInfo:
    """Vet a .pt2 archive without loading it; raise UnsafeFileError on anything unexpected.

    `purpose` is what the program is for: an "inference" program must be deterministic and
    stateless (no random operators, no writes to its own parameters or buffers); a
    "training" program may draw random numbers (dropout), since training replays its seeds.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UnsafeFileError(f"{path.name} is not a torch.export program; {_EXPORT_HINT}")
    try:
        with zipfile.ZipFile(path) as archive:
            return _check_archive(archive, path.name, max_bytes, purpose)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise UnsafeFileError(f"{path.name} is a damaged zip archive ({exc})") from None


def _check_archive(archive: zipfile.ZipFile, name: str, max_bytes: int, purpose: Purpose) -> ProgramInfo:
    infos = archive.infolist()
    root = _check_entries(infos, name, max_bytes)

    def read_json(entry: str) -> Any:
        return _read_json(archive, f"{root}/{entry}", name)

    weights = _check_payload_config(read_json(_WEIGHTS_CONFIG), "data/weights/", "weight_", name)
    constants = _check_payload_config(read_json(_CONSTANTS_CONFIG), "data/constants/", "tensor_", name)
    present = {info.filename[len(root) + 1 :] for info in infos}
    for entry in weights | constants:
        if entry not in present:
            raise UnsafeFileError(f"{name}: config names {entry!r}, which is missing from the archive")
    operators = check_graph_json(read_json(_MODEL_JSON), f"{name}:{_MODEL_JSON}", purpose)
    for entry, expected in _FIXED_ENTRIES.items():
        if expected is None or f"{root}/{entry}" not in archive.namelist():
            continue
        if archive.read(f"{root}/{entry}").strip() != expected:
            raise UnsafeFileError(f"{name}: {entry} must be {expected.decode()!r}")
    return ProgramInfo(
        root=root,
        entries=len(infos),
        uncompressed_bytes=sum(i.file_size for i in infos),
        weights=len(weights),
        constants=len(constants),
        operators=operators,
    )


def _check_entries(infos: list[zipfile.ZipInfo], name: str, max_bytes: int) -> str:
    """Check sizes and names; return the archive's root folder."""
    if len(infos) > MAX_PROGRAM_ENTRIES:
        raise UnsafeFileError(f"{name} has {len(infos)} entries (limit {MAX_PROGRAM_ENTRIES})")
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise UnsafeFileError(f"{name} unpacks to {total} bytes (limit {max_bytes})")
    names = [info.filename for info in infos]
    if any(n.endswith(("data.pkl", ".pkl")) for n in names):
        raise UnsafeFileError(f"{name} is a torch.save checkpoint (pickle), not a torch.export program; {_EXPORT_HINT}")
    root = names[0].split("/", 1)[0] if names else ""
    if not _ROOT_RE.fullmatch(root) or len(set(names)) != len(names):
        raise UnsafeFileError(f"{name} is not a torch.export program; {_EXPORT_HINT}")
    for info in infos:
        rel = info.filename[len(root) + 1 :] if info.filename.startswith(root + "/") else None
        if rel is None or not (rel in _FIXED_ENTRIES or _PAYLOAD_RE.fullmatch(rel)):
            raise UnsafeFileError(
                f"{name}: entry {info.filename[:200]!r} is not allowed (TensorGrid accepts only a plain "
                "torch.export.save archive: no pickled, legacy, AOTInductor or extra files)"
            )
        if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsafeFileError(f"{name}: entry {info.filename!r} is encrypted or oddly compressed")
    missing = [
        e for e in _FIXED_ENTRIES if e.startswith(("archive_", "models/", "data/")) and f"{root}/{e}" not in names
    ]
    if missing:
        raise UnsafeFileError(f"{name} is missing {missing}; {_EXPORT_HINT}")
    return root


def _read_json(archive: zipfile.ZipFile, entry: str, name: str) -> Any:
    if archive.getinfo(entry).file_size > MAX_JSON_BYTES:
        raise UnsafeFileError(f"{name}: {entry} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(archive.read(entry).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UnsafeFileError(f"{name}: {entry} is not valid JSON") from None


def _check_payload_config(config: Any, folder: str, prefix: str, name: str) -> set[str]:
    """Every weight/constant must be a raw tensor payload; return the entries it names."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise UnsafeFileError(f"{name}: malformed payload config in {folder}")
    entries: set[str] = set()
    for fqn, meta in config["config"].items():
        if not isinstance(meta, dict):
            raise UnsafeFileError(f"{name}: malformed payload entry {fqn!r}")
        if meta.get("use_pickle") is not False:
            raise UnsafeFileError(
                f"{name}: {folder.rstrip('/')} entry {fqn!r} is stored as a pickle, which TensorGrid "
                "never loads; only plain dense tensors are accepted"
            )
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not re.fullmatch(prefix + r"[0-9]+", path_name):
            raise UnsafeFileError(
                f"{name}: entry {fqn!r} points at {str(path_name)[:100]!r} (custom or opaque objects are not accepted)"
            )
        if not isinstance(meta.get("tensor_meta"), dict):
            raise UnsafeFileError(f"{name}: entry {fqn!r} has no tensor metadata")
        entries.add(folder + path_name)
    return entries


def load_program(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", *, purpose: Purpose = "inference"
) -> torch.nn.Module:
    """Vet (for `purpose`, see check_program) and load a .pt2 program as a callable module on
    `device`, never unpickling anything."""
    import torch

    info = check_program(path, purpose=purpose)
    sanitized = _sanitized_archive(Path(path), info)
    try:
        program = torch.export.load(sanitized)
        module = program.module()
    except (RuntimeError, ValueError, KeyError, AssertionError, TypeError) as exc:
        raise ExecutionError(
            ErrorKind.INVALID_INPUT, f"{Path(path).name} could not be loaded as a program: {exc}"
        ) from exc
    return module.to(torch.device(device))


def _sanitized_archive(path: Path, info: ProgramInfo) -> io.BytesIO:
    """Copy of the archive with only vetted entries and empty sample inputs.

    Empty sample inputs deserialize to `{}` without touching torch.load. Reading each entry
    through zipfile also verifies its CRC and size, so torch sees exactly what we checked.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as dst:
        for entry in src.infolist():
            rel = entry.filename[len(info.root) + 1 :]
            data = b"" if rel == _SAMPLE_INPUTS else src.read(entry)
            dst.writestr(entry.filename, data)
    buffer.seek(0)
    return buffer
