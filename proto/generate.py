"""Regenerate tensorgrid/v1/*_pb2*.py from proto/ (run from anywhere).

python proto/generate.py            # write into the source tree
python proto/generate.py --out DIR  # write elsewhere (the drift test uses this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out: Path) -> list[Path]:
    sources = sorted(PROTO_DIR.glob("tensorgrid/v1/*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(s.relative_to(PROTO_DIR)) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT)
    ns = parser.parse_args()
    generate(ns.out)
    print(f"generated into {ns.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
