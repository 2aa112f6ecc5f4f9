from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tensorgrid.errors import ExecutionError, InvalidTensorFile, TensorGridError
from tensorgrid.workloads.inference import pick_device, run_inference
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors


class _TwoInputs(torch.nn.Module):
    """Order-sensitive model with several output styles, to check naming and arg order."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style
        self.proj = torch.nn.Linear(8, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> object:
        y = self.proj(a) - b
        if self.style == "tuple":
            return y, y.sum(dim=1)
        if self.style == "dict":
            return {"logits": y, "score": y.amax(dim=1)}
        return y


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path, torch.Tensor]:
    base = tmp_path_factory.mktemp("mlp")
    module = _mlp()
    export_program(module, (torch.randn(4, 64),), base / "mlp.pt2")
    x = torch.randn(103, 64, generator=torch.Generator().manual_seed(1))
    save_tensors({"x": x}, base / "in.safetensors")
    return module, base / "mlp.pt2", base / "in.safetensors", x


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TensorGridError, match="not supported|unknown"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TensorGridError, match="no usable CUDA"):
            pick_device("cuda")


def test_single_batch_matches_original_exactly(mlp: tuple, tmp_path: Path) -> None:
    module, model_path, input_path, x = mlp
    stats = run_inference(model_path, input_path, tmp_path / "out.safetensors", device="cpu")
    assert stats.rows == 103 and stats.seconds >= 0
    out = load_tensors(tmp_path / "out.safetensors")
    with torch.no_grad():
        assert torch.equal(out["output"], module(x))


def test_micro_batches_match_one_batch(mlp: tuple, tmp_path: Path) -> None:
    _, model_path, input_path, _ = mlp
    run_inference(model_path, input_path, tmp_path / "one.safetensors", device="cpu")
    run_inference(model_path, input_path, tmp_path / "many.safetensors", batch_size=10, device="cpu")
    one = load_tensors(tmp_path / "one.safetensors")["output"]
    many = load_tensors(tmp_path / "many.safetensors")["output"]
    assert many.shape == one.shape == (103, 4)
    assert torch.allclose(one, many, rtol=1e-5, atol=1e-6)


def test_same_call_is_bit_identical(mlp: tuple, tmp_path: Path) -> None:
    _, model_path, input_path, _ = mlp
    run_inference(model_path, input_path, tmp_path / "a.safetensors", batch_size=16, device="cpu")
    run_inference(model_path, input_path, tmp_path / "b.safetensors", batch_size=16, device="cpu")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("style", "names"),
    [("tensor", {"output"}), ("tuple", {"output_0", "output_1"}), ("dict", {"logits", "score"})],
)
def test_output_naming_and_input_order(tmp_path: Path, style: str, names: set[str]) -> None:
    torch.manual_seed(0)
    module = _TwoInputs(style).eval()
    export_program(module, (torch.randn(4, 8), torch.randn(4, 3)), tmp_path / "m.pt2")
    a, b = torch.randn(20, 8), torch.randn(20, 3)
    # "a" sorts first by default; input_names overrides the order explicitly.
    save_tensors({"b_second": b, "a_first": a, "unused": torch.zeros(5)}, tmp_path / "in.safetensors")
    run_inference(
        tmp_path / "m.pt2",
        tmp_path / "in.safetensors",
        tmp_path / "out.safetensors",
        input_names=["a_first", "b_second"],
        batch_size=6,
        device="cpu",
    )
    out = load_tensors(tmp_path / "out.safetensors")
    assert set(out) == names
    with torch.no_grad():
        expected = module.proj(a) - b
    first = out["logits"] if style == "dict" else out["output" if style == "tensor" else "output_0"]
    assert torch.allclose(first, expected, rtol=1e-5, atol=1e-6)


def test_default_input_order_is_sorted_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _TwoInputs("tensor").eval()
    export_program(module, (torch.randn(4, 8), torch.randn(4, 3)), tmp_path / "m.pt2")
    a, b = torch.randn(5, 8), torch.randn(5, 3)
    save_tensors({"b": b, "a": a}, tmp_path / "in.safetensors")
    run_inference(tmp_path / "m.pt2", tmp_path / "in.safetensors", tmp_path / "out.safetensors", device="cpu")
    with torch.no_grad():
        assert torch.equal(load_tensors(tmp_path / "out.safetensors")["output"], module(a, b))


def test_bad_inputs_give_clear_errors(mlp: tuple, tmp_path: Path) -> None:
    _, model_path, _, _ = mlp
    save_tensors({"x": torch.randn(4, 64), "y": torch.randn(5, 64)}, tmp_path / "rows.safetensors")
    with pytest.raises(InvalidTensorFile, match="disagree"):
        run_inference(model_path, tmp_path / "rows.safetensors", tmp_path / "o", device="cpu")
    save_tensors({"x": torch.randn(4, 65)}, tmp_path / "wide.safetensors")
    with pytest.raises(ExecutionError) as info:
        run_inference(model_path, tmp_path / "wide.safetensors", tmp_path / "o", device="cpu")
    assert info.value.kind == "program_error"  # the program's own error: a claim from a CPU node
