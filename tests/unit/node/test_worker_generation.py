"""node.worker runs generation requests: the decoding loop in the child, equal to a local run."""

from __future__ import annotations

from pathlib import Path

import torch

from tensorgrid.workloads.generation import DecodeSettings, run_generation
from tensorgrid.workloads.prompts import job_seeds
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.decoders import export_decoder, tiny_decoder
from tests.unit.node.test_worker import run_worker


def test_a_generation_request_decodes_like_a_local_run(tmp_path: Path) -> None:
    export_decoder(tiny_decoder(), tmp_path / "decoder.pt2")
    g = torch.Generator().manual_seed(2)
    prompts = {
        "tokens": torch.randint(0, 50, (5, 6), generator=g),
        "lengths": torch.tensor([6, 1, 3, 2, 5]),
        "seeds": torch.from_numpy(job_seeds(99, 10, 15)),  # a shard carries its prompts' seeds
    }
    save_tensors(prompts, tmp_path / "shard.safetensors")
    # as the coordinator sends them: no job seed (the shard's seeds are all the node needs)
    settings = DecodeSettings(max_new_tokens=6, vocab_size=50, temperature=1.0, top_k=8, stop_tokens=(3,))
    base = {"model_path": str(tmp_path / "decoder.pt2"), "input_path": str(tmp_path / "shard.safetensors")}
    requests = [
        {
            **base,
            "id": "a",
            "kind": "generation",
            "output_path": str(tmp_path / "a"),
            "device": "cpu",
            "threads": 1,
            "settings": {"generation": settings.to_dict(), "device": "cpu", "task_kind": "generation"},
        },
        {**base, "id": "b", "kind": "generation", "output_path": str(tmp_path / "b"), "settings": {}},
    ]
    ready, ok, bad = run_worker(requests, timeout=300)[0]
    assert ready["ready"] is True
    assert ok["ok"] is True and ok["rows"] == 5, ok
    assert bad["ok"] is False and bad["error_kind"] == "invalid_input" and "decoding settings" in bad["message"]
    run_generation(tmp_path / "decoder.pt2", tmp_path / "shard.safetensors", tmp_path / "local", settings, device="cpu")
    got, want = load_tensors(tmp_path / "a"), load_tensors(tmp_path / "local")
    assert torch.equal(got["tokens"], want["tokens"]) and torch.equal(got["lengths"], want["lengths"])
    torch.testing.assert_close(got["logprobs"], want["logprobs"], rtol=1e-3, atol=1e-4)
