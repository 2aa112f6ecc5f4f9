"""The operator denylist: every aten operator classified, each denied group refused with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tensorgrid.errors import UnsafeFileError
from tensorgrid.workloads.graphcheck import check_graph_json
from tensorgrid.workloads.model import check_program, export_program
from tensorgrid.workloads.oppolicy import GATED, GROUPS, classification
from tensorgrid.workloads.optable import GATING_ARGUMENTS, TABLE, _parse, generate, schema, torch_version

RANDOM_REFUSAL = "random operators are refused in inference programs: results could not be checked"


def _registered() -> dict[str, list[str]]:
    """Every aten operator of the installed torch: {name: [overloads]}."""
    ops: dict[str, list[str]] = {}
    for full in torch._C._dispatch_get_all_op_names():
        if full.startswith("aten::"):
            name, _, overload = full[len("aten::") :].partition(".")
            ops.setdefault(name, []).append(overload or "default")
    return ops


def _with(verdict: str) -> list[str]:
    return sorted(name for name, v in classification().items() if v == verdict)


def _graph(target: str, inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    node = {"target": target, "inputs": inputs or [], "outputs": []}
    return {"graph_module": {"graph": {"nodes": [node]}, "signature": {"input_specs": [], "output_specs": []}}}


def test_every_registered_aten_operator_is_classified() -> None:
    missing = sorted(set(_registered()) - set(classification()))
    assert not missing, (
        f"torch {torch.__version__} registers aten operators nobody has classified: {missing[:50]}; classify each "
        "in tensorgrid/workloads/aten_ops.txt (allow, or a denied group of tensorgrid/workloads/oppolicy.py)"
    )


def test_the_schema_table_is_the_installed_torchs() -> None:
    """The checks read operator schemas from a committed table (the coordinator does not import
    torch): it must say exactly what the installed torch's registry says."""
    committed = (Path(__file__).parents[3] / "tensorgrid" / "workloads" / TABLE).read_text(encoding="utf-8")
    assert committed == generate(), f"{TABLE} is stale: run python -m tensorgrid.workloads.optable --write"
    assert torch_version() == torch.__version__.split("+")[0]
    for name, overloads in _registered().items():  # every registered overload is in it
        for overload in overloads:
            assert schema(name, overload) is not None, f"aten.{name}.{overload}"
    assert schema("linear", "nonexistent") is None
    add_ = schema("add_", "Tensor")
    assert add_ is not None and add_.aliases == {"self": True}  # Tensor(a!) self
    view = schema("view", "default")
    assert view is not None and view.aliases == {"self": False}  # Tensor(a) self
    sdpa = schema("scaled_dot_product_attention", "default")
    assert sdpa is not None and sdpa.defaults == {"dropout_p": 0.0}
    for flag, prob in GATED.values():  # the table records every argument a gate reads
        assert {flag, prob} - {None} <= GATING_ARGUMENTS


def test_a_damaged_schema_table_is_refused() -> None:
    with pytest.raises(ValueError, match="line 2: cannot read 'self!'"):
        _parse("# torch 2.13.0\nadd_ Tensor self!\n")
    with pytest.raises(ValueError, match="names no torch release"):
        _parse("add_ Tensor self:w\n")


def test_classification_matches_the_groups() -> None:
    verdicts = set(classification().values())
    assert verdicts <= {"allow", *GROUPS}
    assert set(_with("random-when-training")) == set(GATED), "every gated operator needs its flag/probability rule"
    assert len(classification()) >= 1500  # the whole registry, not a list of what tests used


@pytest.mark.parametrize("name", _with("random"))
def test_every_random_operator_is_refused_in_inference_and_allowed_in_training(name: str) -> None:
    for overload in _registered()[name]:
        graph = _graph(f"torch.ops.aten.{name}.{overload}")
        with pytest.raises(UnsafeFileError, match=RANDOM_REFUSAL) as e:
            check_graph_json(graph, "m.json", "inference")
        assert f"aten.{name}.{overload}" in str(e.value)
        assert check_graph_json(graph, "m.json", "training") == (f"torch.ops.aten.{name}.{overload}",)


@pytest.mark.parametrize("name", sorted(GATED))
def test_gated_operators_are_refused_only_when_random(name: str) -> None:
    flag, prob = GATED[name]
    for overload in _registered()[name]:
        target = f"torch.ops.aten.{name}.{overload}"
        on: list[dict[str, Any]] = []
        if flag is not None:
            on.append({"name": flag, "arg": {"as_bool": True}})
        if prob is not None:
            on.append({"name": prob, "arg": {"as_float": 0.25}})
        with pytest.raises(UnsafeFileError, match=RANDOM_REFUSAL):
            check_graph_json(_graph(target, on), "m.json", "inference")
        check_graph_json(_graph(target, on), "m.json", "training")
        if flag is not None:
            off = [{"name": flag, "arg": {"as_bool": False}}, *on[1:]]
            check_graph_json(_graph(target, off), "m.json", "inference")
        if prob is not None:
            zero = [*on[:-1], {"name": prob, "arg": {"as_float": 0.0}}]
            check_graph_json(_graph(target, zero), "m.json", "inference")


@pytest.mark.parametrize("verdict", ["files", "unchecked-memory", "process"])
def test_other_denied_groups_are_refused_for_every_purpose(verdict: str) -> None:
    names = _with(verdict)
    assert names
    for name in names:
        overload = _registered()[name][0]
        for purpose in ("inference", "training"):
            with pytest.raises(UnsafeFileError, match=f"aten.{name}.{overload}") as e:
                check_graph_json(_graph(f"torch.ops.aten.{name}.{overload}"), "m.json", purpose)
            assert GROUPS[verdict].reason in str(e.value)


def test_named_dangers_are_denied() -> None:
    verdicts = classification()
    assert verdicts["from_file"] == "files"
    for name in ("_sparse_coo_tensor_unsafe", "_sparse_compressed_tensor_unsafe", "sparse_coo_tensor", "set_"):
        assert verdicts[name] == "unchecked-memory", name
    for name in ("rand", "randn_like", "randint", "bernoulli", "multinomial", "normal", "uniform_", "poisson"):
        assert verdicts[name] == "random", name
    for name in ("native_dropout", "feature_dropout", "alpha_dropout", "rrelu", "scaled_dot_product_attention"):
        assert verdicts[name] == "random-when-training", name
    for name in ("__and__", "__or__", "_local_scalar_dense", "linear", "embedding_bag", "lstm"):
        assert verdicts[name] in ("allow", "random-when-training"), name


@pytest.mark.parametrize(
    "target",
    [
        "torch.ops.prims.add.default",
        "torch.ops.quantized.linear.default",
        "torch.ops._c10d_functional.all_reduce.default",
        "torch.ops.higher_order.cond",
        "torch.ops.mylib.custom.default",
        "builtins.eval",
    ],
)
def test_operators_outside_aten_are_refused(target: str) -> None:
    with pytest.raises(UnsafeFileError, match="not an aten operator"):
        check_graph_json(_graph(target), "m.json", "training")


def test_unknown_overload_and_purpose_are_refused() -> None:
    with pytest.raises(UnsafeFileError, match="not an operator"):
        check_graph_json(_graph("torch.ops.aten.linear.nonexistent"), "m.json")
    with pytest.raises(ValueError, match="purpose"):
        check_graph_json(_graph("torch.ops.aten.linear.default"), "m.json", "serving")  # type: ignore[arg-type]


class _Masked(nn.Module):
    """Uses aten.__and__.Tensor, which the old allowlist refused for its leading underscores."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * ((x > 0) & (x < 1)).to(x.dtype)


class _Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


class _Attention(nn.Module):
    def __init__(self, dropout_p: float) -> None:
        super().__init__()
        self.dropout_p = dropout_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.view(x.shape[0], 1, 4, 2)
        return F.scaled_dot_product_attention(q, q, q, dropout_p=self.dropout_p).reshape(x.shape[0], 8)


def _export(module: nn.Module, path: Path) -> Path:
    export_program(module, (torch.randn(4, 8),), path)
    return path


def test_real_exports(tmp_path: Path) -> None:
    assert "torch.ops.aten.__and__.Tensor" in check_program(_export(_Masked(), tmp_path / "and.pt2")).operators
    noisy = _export(_Noisy(), tmp_path / "noisy.pt2")
    with pytest.raises(UnsafeFileError, match=f"{RANDOM_REFUSAL} \\(aten.rand_like.default\\)"):
        check_program(noisy)
    check_program(noisy, purpose="training")
    dropout = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    check_program(_export(dropout.eval(), tmp_path / "eval.pt2"))  # dropout(train=False) is the identity
    with pytest.raises(UnsafeFileError, match="train=True.*model.eval"):
        check_program(_export(dropout.train(), tmp_path / "train.pt2"))
    check_program(_export(_Attention(0.0), tmp_path / "attn0.pt2"))
    with pytest.raises(UnsafeFileError, match=f"{RANDOM_REFUSAL} .*dropout_p=0.1"):
        check_program(_export(_Attention(0.1), tmp_path / "attn1.pt2"))
