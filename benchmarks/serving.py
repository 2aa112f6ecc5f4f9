"""Serving: closed-loop clients against an endpoint with 2 replicas, next to the same model
behind a plain grpc.aio server in one process, measured in the same run.

Each client sends one request, waits for the answer, sends the next. At 1, 8 and 64
concurrent clients the JSON reports p50 and p99 latency and throughput of both, and:
  - added_p50_ms_1: the endpoint's p50 minus the baseline's at 1 client (goal ≤ 2 ms),
  - p99_ratio_C: endpoint p99 / baseline p99 (goal ≤ 2 at every C),
  - throughput_ratio_64: endpoint / baseline requests per second at 64 clients (goal ≥ 0.8).
Each side's figures at each level carry cpu_us_per_request: the CPU each of its processes
spent per request during its turns (benchmarks/_serving_cpu.py), the client's included.
Then the same load (8 clients) runs while one replica's node is SIGKILLed mid-run:
errors seen by clients (goal 0) and the p99 around the failover.

Both sides get the same request bytes over the same RPC message types (InferRequest →
InferResponse): the grid's clients on one open InferStream as the SDK sends them, the
baseline's as unary Infer calls (--grid-infer, --baseline-infer change either). The baseline
runs each request's forward pass in its event loop as it comes, the grid routes it
coordinator → node agent → sandboxed worker and back. Both run from the start; at each
level they take turns (--rounds each, seconds/rounds a turn), so a shift in the machine's
load between them (it is shared) lands on both sides alike.

--trace stamps each 1-client request's hops in the grid's processes (tensorgrid.serving.trace)
and adds to the JSON where the median and the slowest 1% spent their time
(benchmarks/_serving_trace.py says what each hop is).

    python -m benchmarks.serving [--seconds 6] [--levels 1,8,64] [--rounds 2] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import torch

from benchmarks._common import emit
from benchmarks._serving_cpu import Meter
from benchmarks._serving_load import closed_loop, summary
from benchmarks._serving_trace import analyse, stamping
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.serving.tensors import tensors_to_bytes
from tensorgrid.spec import EndpointSpec
from tensorgrid.v1 import serving_pb2
from tensorgrid.workloads.model import export_program

WIDTH = 256
INFER = "/tensorgrid.v1.SubmitterService/Infer"
CPU_ROLES = {"baseline": ("baseline", "client"), "grid": ("coordinator", "agent", "worker", "referee", "client")}
GRID_ARGS = ("--lease-ttl-ms", "5000", "--heartbeat-ms", "500")
ROUNDS = 2  # turns each side takes at each level
DATA_PORT_ARGS = ("--serve-data-listen", "127.0.0.1:0")


def build_model(root: Path) -> tuple[Path, bytes]:
    """A 3-layer MLP (256 → 512 → 512 → 10) exported as a program, and one request's bytes (1 row)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(WIDTH, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    ).eval()
    x = torch.randn(8, WIDTH)  # a batch dimension of 1 would be specialised by the export
    path = root / "mlp.pt2"
    export_program(model, (x,), path)
    return path, tensors_to_bytes({"x": x[:1]})


# ---- the baseline: the same program behind one grpc.aio server ----------------------------------
async def _baseline_server(model_path: Path, port_file: Path) -> None:
    """A plain server: safetensors' own load and save, around the strict header check every
    side of the grid makes on a stranger's bytes (done afresh for each request)."""
    from safetensors.torch import load, save

    from tensorgrid.workloads.inference import load_program, pick_device
    from tensorgrid.workloads.tensorfile import header_of_bytes

    torch.set_num_threads(1)
    module = load_program(model_path, pick_device("cpu"))

    async def infer(request: serving_pb2.InferRequest, context: Any) -> serving_pb2.InferResponse:
        if len(request.input) > 1 << 20:
            raise ValueError("over 1 MiB")
        header_of_bytes(request.input)
        tensors = load(request.input)
        with torch.no_grad():
            out = module(*tensors.values())
        out = out[0] if isinstance(out, list | tuple) else out
        output = save({"output": out.detach().to("cpu").contiguous()})
        return serving_pb2.InferResponse(output=output, node="baseline", attempts=1)

    async def infer_stream(requests: Any, context: Any) -> Any:  # one by one, as its event loop runs Infer
        async for request in requests:
            answer = await infer(request, context)
            answer.request_id = request.request_id
            yield answer

    kw = dict(
        request_deserializer=serving_pb2.InferRequest.FromString,
        response_serializer=serving_pb2.InferResponse.SerializeToString,
    )
    handler = grpc.method_handlers_generic_handler(
        "tensorgrid.v1.SubmitterService",
        {
            "Infer": grpc.unary_unary_rpc_method_handler(infer, **kw),
            "InferStream": grpc.stream_stream_rpc_method_handler(infer_stream, **kw),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


def start_baseline(root: Path, model_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = root / "baseline.port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.serving",
            "--baseline-server",
            str(model_path),
            "--port-file",
            str(port_file),
        ]
    )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the baseline server did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


# ---- the run ------------------------------------------------------------------------------------
def start_grid(
    root: Path, model_path: Path, check_rate: float, data_port: bool = False
) -> tuple[LocalGrid, Client, str]:
    """data_port: the coordinator opens its serving data port (workers answer it directly)."""
    grid = LocalGrid(root / "grid")
    grid.start_coordinator(*GRID_ARGS, *(DATA_PORT_ARGS if data_port else ()))
    for i in range(2):
        grid.start_node(f"node{i}", "--device", "cpu", "--threads", "1", "--serve-replicas", "1")
    grid.wait_for_nodes(2, timeout=120)
    client = grid.client(Signer.generate())
    endpoint = client.endpoints.create(
        model_path, min_replicas=2, max_replicas=2, device="cpu", max_batch=16, check_rate=check_rate
    )
    client.endpoints.wait_ready(endpoint, 2, timeout_s=120)
    return grid, client, endpoint


def measure(
    levels: list[int],
    seconds: float,
    check_rate: float,
    rounds: int = ROUNDS,
    streams: tuple[bool, bool] = (False, True),
    data_port: bool = True,
    traced: str | None = None,
) -> dict[str, Any]:
    """streams: whether the baseline's and the grid's clients send on an InferStream (else unary Infer);
    data_port: whether the grid's coordinator opens its serving data port; traced: --trace's directory
    to keep the stamps in ("": a temporary one; None: no trace)."""
    result: dict[str, Any] = {
        "benchmark": "serving",
        "levels": levels,
        "seconds_per_level": seconds,
        "rounds": rounds,
        "check_rate": check_rate,
        "infer": {side: "stream" if on else "unary" for side, on in zip(("baseline", "grid"), streams, strict=True)},
        "data_port": data_port,
    }
    with tempfile.TemporaryDirectory(prefix="tg-bench-serving-") as tmp:
        root = Path(tmp)
        model_path, data = build_model(root)
        baseline, port = start_baseline(root, model_path)
        stamps: list[tuple[int, int]] = []
        stamped = Path(traced) if traced else root / "trace"
        try:
            with stamping(stamped if traced is not None else None):
                grid, client, endpoint = start_grid(root, model_path, check_rate, data_port)
        except BaseException:
            _stop(baseline)
            raise
        try:
            md = client.session_metadata()
            none: tuple[tuple[str, str], ...] = ()
            sides = {
                "baseline": (f"127.0.0.1:{port}", none, "", streams[0]),
                "grid": (grid.target, md, endpoint, streams[1]),
            }
            _levels(result, sides, levels, data, seconds, rounds, stamps if traced is not None else None)
            _stop(baseline)
            victim = next(p for p in grid.procs if p.name == "node1")
            failover = asyncio.run(
                closed_loop(
                    grid.target,
                    md,
                    endpoint,
                    data,
                    8,
                    seconds * 1.5,
                    during=lambda: grid.kill_proc(victim),
                    stream=streams[1],
                )
            )
            result["failover_8"] = summary(*failover, seconds * 1.5)
            print(f"grid, 8 clients, node1 killed: {result['failover_8']}", file=sys.stderr)
            result["endpoint_status"] = _status(client.endpoints.get(endpoint))
        finally:
            _stop(baseline)
            client.close()
            grid.stop()  # the processes write out their stamps as they exit
        if traced is not None:
            result["trace"] = analyse(stamped, stamps)
            if traced:
                stamped.mkdir(parents=True, exist_ok=True)
                (stamped / "client.json").write_text(json.dumps(stamps))
    return _ratios(result, levels)


def _levels(
    result: dict[str, Any],
    sides: dict[str, tuple[str, tuple[tuple[str, str], ...], str, bool]],
    levels: list[int],
    data: bytes,
    seconds: float,
    rounds: int,
    stamps: list[tuple[int, int]] | None,
) -> None:
    """Each side's summary at each level into result; stamps: the grid's 1-client requests' times (--trace)."""
    for c in levels:
        seen: dict[str, tuple[list[float], list[str]]] = {side: ([], []) for side in sides}
        meters = {side: Meter() for side in sides}
        for _ in range(rounds):  # the two sides take turns: a change of load hits both alike
            for side, (target, metadata, ep, stream) in sides.items():
                kept = stamps if side == "grid" and c == 1 else None
                meters[side].start()
                lat, err = asyncio.run(
                    closed_loop(target, metadata, ep, data, c, seconds / rounds, stream=stream, stamps=kept)
                )
                meters[side].stop(len(lat) + len(err))
                seen[side][0].extend(lat)
                seen[side][1].extend(err)
        for side in sides:
            result[f"{side}_{c}"] = summary(*seen[side], seconds)
            result[f"{side}_{c}"]["cpu_us_per_request"] = meters[side].per_request_us(CPU_ROLES[side])
            print(f"{side}, {c} clients: {result[f'{side}_{c}']}", file=sys.stderr)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def _status(s: Any) -> dict[str, Any]:
    return {"requests": s.requests, "errors": s.errors, "checked": s.checked, "caught": s.caught, "p50_ms": s.p50_ms}


def _ratios(result: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    for c in levels:
        base, grid = result[f"baseline_{c}"], result[f"grid_{c}"]
        result[f"added_p50_ms_{c}"] = round(grid["p50_ms"] - base["p50_ms"], 3)
        result[f"p99_ratio_{c}"] = round(grid["p99_ms"] / base["p99_ms"], 3)
        result[f"throughput_ratio_{c}"] = round(grid["per_s"] / base["per_s"], 3)
    result["failover_errors"] = result["failover_8"]["errors"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per concurrency level")
    p.add_argument("--levels", default="1,8,64", help="client concurrency levels")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="turns baseline and grid take at each level")
    p.add_argument(
        "--check-rate",
        type=float,
        default=EndpointSpec.check_rate,
        help="share of answers the coordinator checks again (default: the endpoint default, "
        f"{EndpointSpec.check_rate}); 0 measures routing alone",
    )
    p.add_argument(
        "--grid-infer",
        choices=("stream", "unary"),
        default="stream",
        help="how the grid's clients send: on one InferStream, as the SDK does (default), or unary Infer calls",
    )
    p.add_argument(
        "--baseline-infer",
        choices=("unary", "stream"),
        default="unary",
        help="how the baseline's clients send: unary Infer calls to a plain grpc.aio server (default), or on "
        "one stream to it (the same transport as the grid's clients)",
    )
    p.add_argument(
        "--no-data-port",
        action="store_true",
        help="the grid's coordinator opens no serving data port (requests go through the node agents' "
        "Serve streams, as before it existed)",
    )
    p.add_argument(
        "--trace",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="stamp the grid's 1-client requests' hops; add where the median and the slowest 1%% went (DIR: keep them)",
    )
    p.add_argument("--baseline-server", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.baseline_server is not None:
        asyncio.run(_baseline_server(ns.baseline_server, ns.port_file))
        return 0
    if ns.rounds < 1:
        p.error("--rounds must be at least 1")
    streams = (ns.baseline_infer == "stream", ns.grid_infer == "stream")
    levels = [int(c) for c in ns.levels.split(",")]
    emit(measure(levels, ns.seconds, ns.check_rate, ns.rounds, streams, not ns.no_data_port, ns.trace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
