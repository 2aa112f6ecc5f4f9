"""Real-time endpoints end to end: SDK → coordinator → node daemons holding warm replicas, and
back. Answers equal the local model's; a replica's node killed or stopped mid-load costs callers nothing
and a node joining takes its place;
a generation endpoint streams the tokens a local decoding run gives; a deleted endpoint answers
no more; the CLI drives the same path."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.serving.tensors import tensors_to_bytes
from tensorgrid.session import CoordinatorError
from tensorgrid.workloads.generation import DecodeSettings, run_generation
from tensorgrid.workloads.inference import load_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.conftest import shared_dir
from tests.decoders import export_decoder, tiny_decoder
from tests.integration.conftest import Assets, node_args, wait_for

pytestmark = pytest.mark.integration
SERVE = ("--serve-replicas", "1")
V, MAX_NEW = 50, 10


def _serving_grid(make_grid: Callable[..., LocalGrid], nodes: int = 2) -> LocalGrid:
    grid = make_grid()
    grid.start_coordinator()
    for i in range(nodes):
        grid.start_node(f"node{i}", *node_args(), *SERVE)
    grid.wait_for_nodes(nodes, timeout=300)
    return grid


SHARED = pytest.mark.xdist_group("serving")  # share one module grid per worker (see make_module_grid)


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Callable[..., LocalGrid]) -> LocalGrid:
    return _serving_grid(make_module_grid, nodes=2)


@pytest.fixture
def grid(module_grid: LocalGrid) -> LocalGrid:
    """Two nodes of one replica each, shared by the tests that each create and check one endpoint."""
    module_grid.check_running()
    return module_grid


def _local(model: Path, x: torch.Tensor) -> torch.Tensor:
    module = load_program(model, torch.device("cpu"))
    with torch.no_grad():
        out = module(x)
    return out[0] if isinstance(out, list | tuple) else out


def _under_load(client: Client, endpoint: str, x: torch.Tensor, action: Callable[[], object]) -> int:
    """Four closed-loop callers; `action` runs 1.5 s in; they go on 3 s more. Any error a caller
    sees fails the test; answers must have kept coming after the action. Returns the answers."""
    errors: list[BaseException] = []
    answered = [0]
    stop = threading.Event()

    def caller(offset: int) -> None:
        data = tensors_to_bytes({"pixels": x[offset : offset + 2]})
        while not stop.is_set():
            try:
                client.endpoints.infer_bytes(endpoint, data, timeout_s=10)
                answered[0] += 1
            except BaseException as exc:  # any error a caller sees fails the test
                errors.append(exc)
                return

    callers = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in callers:
        t.start()
    time.sleep(1.5)
    before = answered[0]
    action()
    time.sleep(3)
    stop.set()
    for t in callers:
        t.join(30)
    assert not errors, errors[:3]
    assert before > 0 and answered[0] > before  # answers kept coming after the action
    return answered[0]


def test_an_endpoint_answers_like_the_local_model_and_a_dying_replica_costs_callers_nothing(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    grid = _serving_grid(make_grid)
    x = load_tensors(digits.inputs)["pixels"]
    with grid.client(Signer.generate()) as client:
        endpoint = client.endpoints.create(digits.model, min_replicas=2, max_replicas=2, device="cpu", check_rate=0.2)
        status = client.endpoints.wait_ready(endpoint, 2, timeout_s=180)
        assert {r.state for r in status.replicas} == {"ready"} and len({r.node for r in status.replicas}) == 2

        for rows in (1, 3, 7):  # answers equal the local program's, whatever the request's rows
            out = client.infer(endpoint, {"pixels": x[:rows]})
            (name,) = out
            torch.testing.assert_close(out[name], _local(digits.model, x[:rows]), rtol=1e-5, atol=1e-5)

        node1 = next(p for p in grid.procs if p.name == "node1")
        answered = _under_load(client, endpoint, x, lambda: grid.kill_proc(node1))

        status = client.endpoints.get(endpoint)
        assert status.requests >= answered and status.p50_ms > 0 and status.state == "running"
        assert status.ready == 1  # the survivor; there is no third node to take node1's place
        # sampled answers were run again (the first check waits for the referee's start); honest nodes agree
        status = wait_for(lambda: (s := client.endpoints.get(endpoint)).checked > 0 and s, 120, "a checked answer")
        assert status.checked > 0 and status.caught == 0

        grid.start_node("node2", *node_args(), *SERVE)  # a node joining takes the lost replica's place
        status = client.endpoints.wait_ready(endpoint, 2, timeout_s=180)
        assert len({r.node for r in status.replicas if r.state == "ready"}) == 2
        # a node stopping as its operator stops it: its replica released, its requests in flight
        # answered "released", which sends them to the other replica, never to the callers
        node2 = next(p for p in grid.procs if p.name == "node2")
        _under_load(client, endpoint, x, lambda: grid.stop_proc(node2))

        deleted = client.endpoints.delete(endpoint)
        assert deleted.state == "deleted"
        with pytest.raises(CoordinatorError) as refused:
            client.endpoints.infer_bytes(endpoint, tensors_to_bytes({"pixels": x[:1]}), timeout_s=3)
        assert refused.value.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


def _decoder(root: Path) -> None:
    export_decoder(tiny_decoder(), root / "decoder.pt2")


@SHARED
def test_a_generation_endpoint_streams_the_tokens_of_a_local_run(
    grid: LocalGrid, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = shared_dir(tmp_path_factory, "decoder", _decoder) / "decoder.pt2"
    sampling: dict[str, Any] = {"max_new_tokens": MAX_NEW, "vocab_size": V, "temperature": 0.9, "top_k": 20}
    prompt = [3, 14, 15, 9, 2]
    with grid.client(Signer.generate()) as client:
        endpoint = client.endpoints.create(model, serves="generation", device="cpu", **sampling)
        client.endpoints.wait_ready(endpoint, 1, timeout_s=180)
        pieces = list(client.generate(endpoint, prompt, seed=7))
        again = [t for piece in client.generate(endpoint, prompt, seed=7) for t in piece]
        other = [t for piece in client.generate(endpoint, prompt, seed=8) for t in piece]
        assert client.endpoints.delete(endpoint).state == "deleted"  # its replica's node serves the next test

    tokens = [t for piece in pieces for t in piece]
    assert len(pieces) > 1  # streamed as decoded, not in one piece at the end
    assert tokens == again and tokens != other
    prompts, out = tmp_path / "prompt.safetensors", tmp_path / "local.safetensors"
    save_tensors({"tokens": torch.tensor([prompt]), "lengths": torch.tensor([len(prompt)])}, prompts)
    run_generation(model, prompts, out, DecodeSettings(**sampling, seed=7), device="cpu")
    local = load_tensors(out)
    assert tokens == local["tokens"][0, : int(local["lengths"][0])].tolist()


@SHARED
def test_the_cli_creates_calls_shows_and_deletes_an_endpoint(grid: LocalGrid, digits: Assets, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "tensorgrid.cli"]
    env_args = ["--coordinator", grid.target, "--key", str(tmp_path / "me.key")]

    def run(*args: str) -> str:
        done = subprocess.run([*base, *args, *env_args], capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        return done.stdout

    endpoint = run("endpoint", "create", "--model", str(digits.model), "--device", "cpu").strip().splitlines()[-1]
    assert len(endpoint) == 64
    request = tmp_path / "request.safetensors"
    save_tensors({"pixels": load_tensors(digits.inputs)["pixels"][:5]}, request)
    answer = tmp_path / "answer.safetensors"
    assert "answer {" in run("endpoint", "call", endpoint[:10], "--input", str(request), "-o", str(answer))
    (out,) = load_tensors(answer).values()
    assert list(out.shape) == [5, 10]
    status = run("endpoint", "status", endpoint[:10])
    assert "1 ready of 1" in status and "1 answered" in status
    assert endpoint in run("endpoint", "list")
    assert "deleted" in run("endpoint", "delete", endpoint)
