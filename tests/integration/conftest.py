"""Integration fixtures: real coordinator and node processes on 127.0.0.1, real models and data."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tensorgrid.devnet import ChainGrid
from tensorgrid.localca import make_local_ca
from tensorgrid.localgrid import LocalGrid
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.conftest import shared_dir
from tests.datasets import save_digits

pytestmark = pytest.mark.integration
# Test grids' nodes start their task workers with the first task (noop-only nodes never import torch).
LAZY_NODE = ("--worker-start", "first-task")
# Test grids start the referee with its first use: most never run a model (~3.6 CPU-s each).
FAST = ("--heartbeat-ms", "300", "--lease-ttl-ms", "1500", "--check-wait-ms", "2000", "--referee-start", "first-use")


@dataclass(frozen=True)
class Assets:
    model: Path
    inputs: Path
    expected: Path  # local inference over inputs, batch_size=BATCH, one thread
    rows: int


BATCH = 250


def _mlp(width: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, width), torch.nn.ReLU()]
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10)).eval()


def _assets(root: Path, rows: int) -> Assets:
    return Assets(root / "model.pt2", root / "inputs.safetensors", root / "expected.safetensors", rows)


def _build_assets(root: Path, rows: int, width: int, depth: int) -> None:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    x = x.repeat(-(-rows // len(x)), 1)[:rows].contiguous()
    files = _assets(root, rows)
    export_program(_mlp(width, depth), (x[:4],), files.model)
    save_tensors({"pixels": x}, files.inputs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_inference(files.model, files.inputs, files.expected, batch_size=BATCH, device="cpu")
    finally:
        torch.set_num_threads(threads)


def _shared_assets(factory: pytest.TempPathFactory, name: str, rows: int, width: int, depth: int) -> Assets:
    root = shared_dir(factory, name, lambda path: _build_assets(path, rows, width, depth))
    return _assets(root, rows)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """A small MLP over 3,000 rows of real digits: quick tasks."""
    return _shared_assets(tmp_path_factory, "digits", 3000, 64, 1)


@pytest.fixture(scope="session")
def slow_digits(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """A deep, wide MLP: each 1,000-row shard takes a noticeable fraction of a second."""
    return _shared_assets(tmp_path_factory, "slow", 12_000, 1024, 12)


@dataclass(frozen=True)
class TrainingDigits:
    dataset: Path
    train: Path
    eval: Path
    rows: int


def _build_training_digits(root: Path) -> None:
    save_digits(root / "digits.safetensors")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(128, 10)
    )
    export_program(model.train(), (torch.randn(4, 64),), root / "train.pt2")
    export_program(model.eval(), (torch.randn(4, 64),), root / "eval.pt2")


@pytest.fixture(scope="session")
def digits_training(tmp_path_factory: pytest.TempPathFactory) -> TrainingDigits:
    """scikit-learn's 1,797 digits as a training set, and an MLP exported for training and eval."""
    root = shared_dir(tmp_path_factory, "train_digits", _build_training_digits)
    rows = len(load_tensors(root / "digits.safetensors")["labels"])
    return TrainingDigits(root / "digits.safetensors", root / "train.pt2", root / "eval.pt2", rows)


class Stopper:
    """Stops grids in the background: draining nodes and a coordinator's grace period take
    seconds of waiting that the next test need not spend. The session waits for them all.

    in_place: stop each grid before the test (or module) that made it ends, so its processes'
    CPU lands on that test in tests.cpureport's accounting (which turns this on)."""

    def __init__(self, in_place: bool = False) -> None:
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="grid-stop")
        self._pending: list[Future[None]] = []
        self._in_place = in_place

    def stop(self, grid: LocalGrid | ChainGrid) -> None:
        if self._in_place:
            grid.stop()
            return
        self._pending.append(self._pool.submit(grid.stop))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for done in self._pending:
            done.result()  # a grid that failed to stop fails the session


@pytest.fixture(scope="session")
def stopper(pytestconfig: pytest.Config) -> Iterator[Stopper]:
    s = Stopper(in_place=pytestconfig.pluginmanager.hasplugin("tests.cpureport"))
    yield s
    s.close()


def _grids(root: Path, stopper: Stopper) -> Iterator[Callable[..., LocalGrid]]:
    grids: list[LocalGrid] = []

    def make(*coordinator_args: str, tls: bool = False) -> LocalGrid:
        """tls: the grid serves TLS with a fresh local CA (grid.ca_cert) and its nodes verify it."""
        grid_root = root / f"grid{len(grids)}"
        files = make_local_ca(grid_root / "tls") if tls else None
        grid = LocalGrid(grid_root, coordinator_args=[*FAST, *coordinator_args], node_args=[*LAZY_NODE], tls=files)
        grids.append(grid)
        return grid

    yield make
    for grid in grids:
        stopper.stop(grid)


@pytest.fixture
def make_grid(tmp_path: Path, stopper: Stopper) -> Iterator[Callable[..., LocalGrid]]:
    """Grids for one test, stopped after it."""
    yield from _grids(tmp_path, stopper)


@pytest.fixture(scope="module")
def make_module_grid(tmp_path_factory: pytest.TempPathFactory, stopper: Stopper) -> Iterator[Callable[..., LocalGrid]]:
    """Grids shared by the tests of one module, stopped after its last test. Only for tests
    that each submit and check their own jobs: not for ones that kill or add processes or
    count what every node or job on the grid did. Mark them with one xdist_group too: under
    `--dist loadgroup` (deploy/test.sh) the group goes to one worker, which starts the grid
    once (tests/conftest.py makes the mark work under pytest 9)."""
    yield from _grids(tmp_path_factory.mktemp("module_grids"), stopper)


PAIR = pytest.mark.xdist_group("pair")  # the tests on pair_grid: one worker, one grid (see pair_grid)


@pytest.fixture(scope="session")
def pair_session_grid(tmp_path_factory: pytest.TempPathFactory, stopper: Stopper) -> Iterator[LocalGrid]:
    grids = _grids(tmp_path_factory.mktemp("pair"), stopper)
    make = next(grids)
    # Long leases: on a loaded machine a node can stall past FAST's 1.5 s lease, and a spot-check
    # whose lease expires on a two-node grid has no other checker to go to (it stays pending).
    grid = make("--lease-ttl-ms", "20000")
    grid.start_coordinator()
    for threads in (1, 2):
        grid.start_node(f"node{threads}", *node_args(threads))
    grid.wait_for_nodes(2, timeout=300)  # registered before a test counts what they had done
    yield grid
    next(grids, None)  # stopped (in the background)


@pytest.fixture
def pair_grid(pair_session_grid: LocalGrid) -> LocalGrid:
    """A coordinator and two honest nodes (one and two threads), started once and shared by the
    tests of several modules that each submit and check only their own jobs (and count a node's
    work as a difference, never a total). Mark those tests PAIR: under `--dist loadgroup` they all
    go to one worker, which starts the grid once. Not for tests that kill or add processes or bring
    adversaries, nor for jobs that could make its nodes trusted (priced jobs of three or more
    submitters: the shared tests expect every result of these new nodes to be checked)."""
    pair_session_grid.check_running()
    return pair_session_grid


def node_args(threads: int = 1) -> tuple[str, ...]:
    return ("--device", "cpu", "--threads", str(threads))


def wait_for(check, timeout: float = 60.0, what: str = "a condition"):  # type: ignore[no-untyped-def]
    """check()'s first truthy value, polled every 0.3 s; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
