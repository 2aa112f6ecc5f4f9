"""Serving, two versions of the code in one sitting: the baseline server, a grid running the
code under --base and a grid running this checkout, given short turns in rotation.

On a shared machine the load moves more between two runs of `benchmarks.serving` than a
change moves the figures; turns of a second or two, the three sides in rotation (reversed
every other round), put the same minutes of load on each. Make the other version's tree with
e.g. `git archive main | tar -x -C /tmp/main-tree`; each grid's processes run from their tree
(working directory and PYTHONPATH: running_from).

    python -m benchmarks.serving_ab --base /tmp/main-tree [--levels 1,64] [--rounds 10] [--turn 1.5]

This checkout's grid is called on an InferStream as the SDK does (--head-infer), the base's and
the baseline's with unary Infer (--base-infer; --baseline-stream adds the baseline on a stream).

Without --base both grids run this checkout: an A/A run, the noise between two grids of one code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import emit
from benchmarks.serving import build_model, closed_loop, start_baseline, start_grid, summary
from tensorgrid.spec import EndpointSpec

SIDES = ("baseline", "base", "head")
HERE = Path(__file__).resolve().parent.parent  # this checkout


@contextlib.contextmanager
def running_from(tree: Path) -> Iterator[None]:
    """Processes started inside run `tree`'s code: it is their PYTHONPATH and their working
    directory, which `python -m` puts on sys.path before PYTHONPATH (with PYTHONPATH alone,
    a grid's coordinator and agents imported the caller's directory: run from this checkout,
    the base grid ran this checkout's code, all but its sandboxed workers)."""
    path, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    os.environ["PYTHONPATH"] = str(tree)
    os.chdir(tree)
    try:
        yield
    finally:
        os.chdir(cwd)
        if path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = path


def measure(
    base: Path,
    levels: list[int],
    rounds: int,
    turn_s: float,
    check_rate: float,
    base_check_rate: float,
    streams: dict[str, bool] | None = None,
    data_ports: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """streams: which sides' clients send on an InferStream (tensorgrid.infer_stream), else unary
    Infer; a side "baseline_stream" in it adds a fourth side, the baseline server over a stream."""
    streams = streams if streams is not None else {}
    result: dict[str, Any] = {"benchmark": "serving_ab", "levels": levels, "rounds": rounds, "turn_s": turn_s}
    rates = {"head": check_rate, "base": base_check_rate}
    result["check_rates"] = rates
    data_ports = data_ports if data_ports is not None else {}
    result["data_ports"] = data_ports
    sides_run = SIDES + (("baseline_stream",) if "baseline_stream" in streams else ())
    result["infer"] = {side: "stream" if streams.get(side) else "unary" for side in sides_run}
    with tempfile.TemporaryDirectory(prefix="tg-bench-serving-ab-") as tmp:
        root = Path(tmp)
        model_path, data = build_model(root)
        baseline, port = start_baseline(root, model_path)
        grids = []
        try:
            for name, tree in (("head", HERE), ("base", base)):
                (root / name).mkdir()
                with running_from(tree):
                    grids.append((name, *start_grid(root / name, model_path, rates[name], data_ports.get(name, False))))
            none: tuple[tuple[str, str], ...] = ()
            sides = {"baseline": (f"127.0.0.1:{port}", none, ""), "baseline_stream": (f"127.0.0.1:{port}", none, "")}
            for name, grid, client, endpoint in grids:
                sides[name] = (grid.target, client.session_metadata(), endpoint)
            for c in levels:
                seen: dict[str, tuple[list[float], list[str]]] = {side: ([], []) for side in sides_run}
                for r in range(rounds):
                    for side in sides_run if r % 2 == 0 else sides_run[::-1]:
                        target, metadata, endpoint = sides[side]
                        run = closed_loop(target, metadata, endpoint, data, c, turn_s, stream=streams.get(side, False))
                        lat, err = asyncio.run(run)
                        seen[side][0].extend(lat)
                        seen[side][1].extend(err)
                _level(result, c, {side: summary(*seen[side], turn_s * rounds) for side in sides_run})
        finally:
            baseline.terminate()
            baseline.wait(10)
            for _, grid, client, _ in grids:
                client.close()
                grid.stop()
    return result


def _level(result: dict[str, Any], c: int, summaries: dict[str, dict[str, Any]]) -> None:
    b = summaries["baseline"]
    for side, s in summaries.items():
        result[f"{side}_{c}"] = s
        if side != "baseline":
            result[f"{side}_added_p50_ms_{c}"] = round(s["p50_ms"] - b["p50_ms"], 3)
            result[f"{side}_p99_ratio_{c}"] = round(s["p99_ms"] / b["p99_ms"], 3)
            result[f"{side}_throughput_ratio_{c}"] = round(s["per_s"] / b["per_s"], 3)
        print(f"{side}, {c} clients: {s}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--base",
        type=Path,
        default=HERE,
        help="a tree of the other version (e.g. from git archive); default: this checkout, an A/A run that "
        "shows how far two grids of the same code differ in one sitting (the noise a change must beat)",
    )
    p.add_argument("--levels", default="1,64", help="client concurrency levels")
    p.add_argument("--rounds", type=int, default=10, help="turns each side takes at each level")
    p.add_argument("--turn", type=float, default=1.5, help="seconds of one turn")
    p.add_argument("--check-rate", type=float, default=EndpointSpec.check_rate, help="both endpoints' check rate")
    p.add_argument(
        "--base-check-rate",
        type=float,
        help="the base grid's endpoint's check rate, when it differs (e.g. 0: what the checks cost, in one sitting)",
    )
    p.add_argument(
        "--head-infer",
        choices=("stream", "unary"),
        default="stream",
        help="how this checkout's grid is called: on one InferStream, as the SDK does (default), or unary Infer",
    )
    p.add_argument(
        "--base-infer",
        choices=("unary", "stream"),
        default="unary",
        help="how the base grid is called (stream only if its code has InferStream; default unary)",
    )
    p.add_argument(
        "--head-data-port",
        choices=("on", "off"),
        default="on",
        help="whether this checkout's coordinator opens its serving data port (default on)",
    )
    p.add_argument(
        "--base-data-port",
        choices=("off", "on"),
        default="off",
        help="whether the base grid's coordinator opens one (on only if its code has --serve-data-listen)",
    )
    p.add_argument(
        "--baseline-stream",
        action="store_true",
        help="a fourth side: the baseline server called on one stream (the grid's clients' transport)",
    )
    ns = p.parse_args(argv)
    if not (ns.base / "coordinator").is_dir():
        p.error(f"{ns.base} holds no coordinator package: pass a tree of the project")
    levels = [int(c) for c in ns.levels.split(",")]
    base_rate = ns.check_rate if ns.base_check_rate is None else ns.base_check_rate
    streams = {"head": ns.head_infer == "stream", "base": ns.base_infer == "stream"}
    if ns.baseline_stream:
        streams["baseline_stream"] = True
    data_ports = {"head": ns.head_data_port == "on", "base": ns.base_data_port == "on"}
    emit(measure(ns.base.resolve(), levels, ns.rounds, ns.turn, ns.check_rate, base_rate, streams, data_ports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
