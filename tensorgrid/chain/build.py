"""The one command that compiles the contracts: `python -m tensorgrid.chain.build`.

It runs contracts/build.mjs, which calls the pinned solcjs through its standard-JSON API
(the solcjs CLI prints a retry notice before its JSON) and writes the artifacts into
tensorgrid/chain/compiled, their one home. `--check` compiles into a temporary directory
and fails if the result differs from the committed artifacts. Compiling needs a source
checkout (contracts/ and its npm tools); an installed wheel only reads the artifacts.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorgrid.chain.artifacts import ARTIFACTS_DIR, CONTRACTS_DIR
from tensorgrid.chain.errors import ChainError

BUILD_SCRIPT = CONTRACTS_DIR / "build.mjs"


def build(out_dir: Path = ARTIFACTS_DIR, *, timeout: float = 300.0) -> list[Path]:
    """Compile every contract into `out_dir`; return the artifact paths written."""
    if not BUILD_SCRIPT.is_file():
        raise ChainError(f"no {BUILD_SCRIPT}: compiling the contracts needs a TensorGrid source checkout")
    node = shutil.which("node")
    if node is None:
        raise ChainError("node is not installed; the contracts compile with solcjs (Node 20+)")
    if not (CONTRACTS_DIR / "node_modules" / "solc").is_dir():
        raise ChainError(f"solc is not installed; run `npm ci --prefix {CONTRACTS_DIR}` or deploy/bootstrap.sh")
    proc = subprocess.run(
        [node, str(BUILD_SCRIPT), "--out", str(out_dir)],
        cwd=CONTRACTS_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ChainError(f"contract compilation failed:\n{proc.stderr.strip()}")
    return sorted(out_dir.rglob("*.json"))


def drift(committed: Path = ARTIFACTS_DIR) -> list[str]:
    """Compile afresh and list the artifact files (relative paths) that differ from `committed`."""
    with tempfile.TemporaryDirectory(prefix="tg-artifacts-") as tmp:
        fresh = Path(tmp)
        build(fresh)
        names = {p.relative_to(fresh).as_posix() for p in fresh.rglob("*.json")}
        names |= {p.relative_to(committed).as_posix() for p in committed.rglob("*.json")}
        return sorted(
            name
            for name in names
            if not (fresh / name).is_file()
            or not (committed / name).is_file()
            or not filecmp.cmp(fresh / name, committed / name, shallow=False)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tensorgrid.chain.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed artifacts are stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = drift()
            if stale:
                print("stale artifacts (run python -m tensorgrid.chain.build): " + ", ".join(stale))
                return 1
            print("artifacts match the sources")
            return 0
        for path in build():
            print(f"wrote {path}")
    except ChainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
