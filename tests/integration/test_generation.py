"""Generation end to end: SDK → coordinator → node daemons running the decoding loop → the same
tokens as a local run; spot-checks re-run sampled prompts as generation tasks; a node that
changes tokens is caught; bad prompt files are refused at intake."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer
from tensorgrid.errors import InvalidTensorFile
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.spec import GenerationSpec, VerificationSpec
from tensorgrid.types import BlobRef, JobState, Lease
from tensorgrid.workloads.generation import DecodeSettings, run_generation
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.conftest import shared_dir
from tests.decoders import export_decoder, tiny_decoder
from tests.integration.adversaries import Pool, SimClient
from tests.integration.conftest import PAIR, node_args

pytestmark = pytest.mark.integration
V, PROMPTS, MAX_NEW = 50, 40, 12
SAMPLING = {"max_new_tokens": MAX_NEW, "temperature": 0.9, "top_k": 20, "top_p": 0.95, "seed": 1234}
SHARED = PAIR  # the tests that each check only their own job share pair_grid


@pytest.fixture
def grid(pair_grid: LocalGrid) -> LocalGrid:
    return pair_grid


@dataclass(frozen=True)
class Decoder:
    model: Path
    prompts: Path


def _build(root: Path) -> None:
    export_decoder(tiny_decoder(), root / "decoder.pt2")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 13, (PROMPTS,), generator=g)
    save_tensors(
        {"tokens": torch.randint(0, V, (PROMPTS, 12), generator=g), "lengths": lengths}, root / "p.safetensors"
    )


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Decoder:
    root = shared_dir(tmp_path_factory, "decoder", _build)
    return Decoder(root / "decoder.pt2", root / "p.safetensors")


def local(decoder: Decoder, out: Path, **settings: object) -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = DecodeSettings.from_dict({"vocab_size": V, **settings})
        run_generation(decoder.model, decoder.prompts, out, s, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return load_tensors(out)


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert torch.equal(got["tokens"], want["tokens"])
    assert torch.equal(got["lengths"], want["lengths"])
    torch.testing.assert_close(got["logprobs"], want["logprobs"], rtol=1e-3, atol=1e-4)


@SHARED
def test_two_nodes_generate_what_a_local_run_does_and_check_each_other(
    grid: LocalGrid, decoder: Decoder, tmp_path: Path
) -> None:
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_generation(
            decoder.model, decoder.prompts, vocab_size=V, shard_prompts=8, stop_tokens=(7,), device="cpu", **SAMPLING
        )
        assert job.tasks_total == 5  # no decoys: checks of 8-prompt shards are at the compute budget already
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        kinds = [e.kind for e in client.watch(job.job_id)]
        client.result(job.job_id, tmp_path / "grid.safetensors")
        nodes = client.nodes()
    want = local(decoder, tmp_path / "local.safetensors", stop_tokens=[7], **SAMPLING)
    assert want["lengths"].min() < MAX_NEW  # the stop token ended some prompts early
    assert_same(load_tensors(tmp_path / "grid.safetensors"), want)
    # new nodes are always checked: checks ran (as generation tasks) and agreed
    assert kinds.count("verified") >= 1 and "caught" not in kinds and "disputed" not in kinds
    assert all(n.caught == 0 and n.rejections == 0 for n in nodes)


@SHARED
def test_bad_prompt_files_are_refused_at_intake(grid: LocalGrid, decoder: Decoder, tmp_path: Path) -> None:
    prompts = load_tensors(decoder.prompts)
    save_tensors({"tokens": prompts["tokens"]}, tmp_path / "no_lengths.safetensors")
    save_tensors({**prompts, "tokens": prompts["tokens"] + V}, tmp_path / "big_ids.safetensors")
    with Client(grid.target, Signer.generate()) as client:
        with pytest.raises(InvalidTensorFile, match="lengths"):  # the SDK refuses before uploading
            client.submit_generation(decoder.model, tmp_path / "no_lengths.safetensors", vocab_size=V)
        model = client.upload(decoder.model)
        for name, message in (("no_lengths", "lengths"), ("big_ids", "vocabulary")):
            ref = client.upload(tmp_path / f"{name}.safetensors")  # a submitter skipping the SDK's checks
            with pytest.raises(CoordinatorError, match=message):
                client.submit(GenerationSpec(model=model, prompts=ref, vocab_size=V))
        with pytest.raises(CoordinatorError, match="vocabulary"):  # a vocabulary smaller than the prompts' ids
            client.submit(GenerationSpec(model=model, prompts=client.upload(decoder.prompts), vocab_size=V // 2))
        assert client.jobs(client.signer.address) == []  # nothing was stored


@dataclass
class TokenChanger(SimClient):
    """Decodes honestly, then changes the last generated token of every prompt."""

    target: str
    pool: Pool
    workdir: Path
    signer: Signer = field(default_factory=Signer.generate)
    submitted: int = 0

    async def _answer(self, client: NodeClient, lease: Lease) -> None:
        assert lease.model is not None
        model, inputs = await self._fetch(client, lease.model), await self._fetch(client, lease.input)
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            out = Path(tmp) / "out.safetensors"
            settings = DecodeSettings.from_dict(lease.settings["generation"])  # type: ignore[arg-type]
            async with self.pool.torch_lock:
                module = await asyncio.to_thread(self.pool.module, model)
                await asyncio.to_thread(run_generation, model, inputs, out, settings, device="cpu", module=module)
            tensors = {k: v.clone() for k, v in st_load(out.read_bytes()).items()}
        last = (tensors["lengths"] - 1).clamp(min=0)
        rows = torch.arange(len(last))
        tensors["tokens"][rows, last] = (tensors["tokens"][rows, last] + 1) % V
        body = st_save(tensors)
        receipt = client.sign(lease, BlobRef(hashlib.sha256(body).hexdigest(), len(body)))
        self.submitted += 1
        await client.submit(receipt, len(body), body)


def test_a_node_changing_tokens_is_caught(
    make_grid: Callable[..., LocalGrid], decoder: Decoder, tmp_path: Path
) -> None:
    grid = make_grid("--check-wait-ms", "60000")
    grid.start_coordinator()
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_generation(
            decoder.model,
            decoder.prompts,
            vocab_size=V,
            shard_prompts=8,
            device="cpu",
            verification=VerificationSpec(canary_rate=0.0),
            **SAMPLING,
        )
        work = tmp_path / "sim"
        work.mkdir()
        cheat = TokenChanger(grid.target, Pool(), work)

        async def scenario() -> None:
            stop = asyncio.Event()
            run = asyncio.create_task(cheat.run(stop))
            await asyncio.sleep(1.0)  # the cheater gets the first lease
            grid.start_node("honest", *node_args())
            deadline = time.monotonic() + 240  # a loaded machine: the pytest timeout is 300 s
            while client.job(job.job_id).state in (JobState.QUEUED, JobState.RUNNING):
                assert time.monotonic() < deadline, "the job did not finish"
                await asyncio.sleep(0.3)
            stop.set()
            await run

        asyncio.run(scenario())
        final = client.job(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        client.result(job.job_id, tmp_path / "grid.safetensors")
        record = {n.address.lower(): n for n in client.nodes()}
    assert cheat.submitted >= 1
    assert record[cheat.address.lower()].caught + record[cheat.address.lower()].rejections >= 1
    assert_same(load_tensors(tmp_path / "grid.safetensors"), local(decoder, tmp_path / "local.safetensors", **SAMPLING))


@SHARED
def test_the_cli_submits_watches_with_a_rate_and_downloads(grid: LocalGrid, decoder: Decoder, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    proc = subprocess.run(
        [
            sys.executable, "-m", "tensorgrid.cli", "job", "submit-generate",
            "--coordinator", grid.target, "--key", str(tmp_path / "submitter.key"),
            "--model", str(decoder.model), "--prompts", str(decoder.prompts), "--vocab-size", str(V),
            "--max-new-tokens", str(MAX_NEW), "--shard-prompts", "20", "--stop-token", "7",
            "--verification", "none", "--watch", "-o", str(out),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tokens/s" in proc.stderr and "tokens/s" in proc.stdout  # while watching, and the exact rate at the end
    want = local(decoder, tmp_path / "local.safetensors", max_new_tokens=MAX_NEW, stop_tokens=[7])  # greedy
    assert_same(load_tensors(out), want)
