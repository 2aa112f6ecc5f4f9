"""A chain submission (ValidateJob, then SubmitJob of the same signed spec) measures its program once
(services.intake_passes): SubmitJob finds ValidateJob's pass and plans without the measured run. On
main both ran it: two fresh measured children a submission.

What a hostile submitter might try with a remembered pass: use it for another program, limit or
input (another spec hash: measured, and refused when over), for another submitter's identical spec
(measured: a pass is its submitter's), under other coordinator settings, after it expired, twice;
or fill the memory to evict others' passes or grow it (bounded, a submitter's own first)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.app import Coordinator
from coordinator.kinds.inference import vetting
from coordinator.kinds.training import vetting as training_vetting
from coordinator.services.intake import spec_blobs
from coordinator.services.intake_passes import MAX_PASSES, MAX_PER_SUBMITTER, PASS_TTL_S, MeasuredPasses
from tensorgrid.crypto import Signer, sign_message, submit_message
from tensorgrid.errors import SpecError
from tensorgrid.sandbox import SandboxLimits
from tensorgrid.spec import InferenceSpec, TrainingSpec, canonical_json, parse_spec, spec_hash
from tensorgrid.types import BlobRef, JobInfo
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.datasets import save_digits
from tests.unit.coordinator.conftest import SharedReferee, coordinator_limits
from tests.unit.coordinator.test_vetting_memory import LIMIT, WIDTH, Hoarder, Small

ALICE, BOB = Signer.from_hex("11" * 32), Signer.from_hex("22" * 32)
SETTINGS = "the coordinator's settings"


# ---- the memory itself ---------------------------------------------------------------------------
def test_a_pass_is_for_its_submitter_spec_and_settings_only_and_taken_once() -> None:
    passes = MeasuredPasses()
    passes.add("0xa", "spec", SETTINGS)
    assert not passes.take("0xb", "spec", SETTINGS)  # another submitter's identical spec
    assert not passes.take("0xa", "other spec", SETTINGS)  # another program, limit or input
    assert not passes.take("0xa", "spec", "a smaller referee cap")  # other settings
    assert passes.take("0xa", "spec", SETTINGS)
    assert not passes.take("0xa", "spec", SETTINGS)  # once
    passes.add("0xa", "spec", "x")
    assert not passes.take("0xa", "specx", "")  # parts are not joined into one text


def test_a_pass_expires() -> None:
    now = [0.0]
    passes = MeasuredPasses(clock=lambda: now[0])
    passes.add("0xa", "spec", SETTINGS)
    passes.add("0xa", "later", SETTINGS)
    now[0] = PASS_TTL_S
    assert not passes.take("0xa", "spec", SETTINGS)
    passes.add("0xb", "spec", SETTINGS)
    assert len(passes) == 1  # expired ones are dropped as others come, not kept until taken


def test_a_submitter_cannot_evict_others_passes_nor_grow_the_memory() -> None:
    passes = MeasuredPasses()
    passes.add("0xvictim", "spec", SETTINGS)
    for i in range(10 * MAX_PASSES):
        passes.add("0xhostile", f"spec {i}", SETTINGS)
    assert len(passes) == MAX_PER_SUBMITTER + 1  # its own oldest went first
    assert passes.take("0xvictim", "spec", SETTINGS)
    for i in range(10 * MAX_PASSES):  # fresh keys: bounded in all (an evicted pass is measured again)
        passes.add(f"0x{i}", "spec", SETTINGS)
    assert len(passes) == MAX_PASSES


# ---- intake, with the real referee and measured children ------------------------------------------
@pytest.fixture(scope="module")
def referee_limits() -> SandboxLimits:
    return coordinator_limits()


@pytest.fixture
def app(shared_referee: SharedReferee, tmp_path: Path) -> Iterator[Coordinator]:
    coordinator = shared_referee.coordinator(f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    yield coordinator
    coordinator.runtime.shutdown()
    coordinator.store.close()


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The measured runs intake starts (inference's probe, training's first step), in order."""
    made: list[str] = []

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            made.append(name)
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(vetting, "measure_probe", counted("probe", vetting.measure_probe))
    monkeypatch.setattr(training_vetting, "measure_train_step", counted("step", training_vetting.measure_train_step))
    return made


def _owned(app: Coordinator, signer: Signer, path: Path) -> BlobRef:
    ref = app.blobs.put_file(path)
    app.store.blob_access.record_upload(signer.address, ref, ref.size, 0)
    return ref


def _inference(app: Coordinator, tmp: Path, signer: Signer, module: torch.nn.Module, **kw: Any) -> bytes:
    model, inputs = tmp / f"{type(module).__name__}.pt2", tmp / "x.safetensors"
    export_program(module.eval(), (torch.zeros(4, WIDTH),), model)
    if not inputs.exists():
        torch.manual_seed(0)
        save_tensors({"x": torch.randn(400, WIDTH)}, inputs)
    settings: dict[str, Any] = {"shard_rows": 100, "task_memory_limit_bytes": LIMIT, "nonce": "n", **kw}
    spec = InferenceSpec(model=_owned(app, signer, model), inputs=_owned(app, signer, inputs), **settings)
    return canonical_json(spec)


def _validate(app: Coordinator, signer: Signer, raw: bytes) -> None:
    signature = sign_message(signer, submit_message(spec_hash(raw)))
    asyncio.run(app.intake.validate(raw, signer.address, signature))


def _submit(app: Coordinator, signer: Signer, raw: bytes) -> JobInfo:
    signature = sign_message(signer, submit_message(spec_hash(raw)))
    return asyncio.run(app.intake.submit(raw, signer.address, signature))


@pytest.mark.timeout(300)  # fresh measured children start on a loaded machine
def test_a_validated_spec_is_measured_once_and_a_pass_serves_no_other_spec_or_submitter(
    app: Coordinator, tmp_path: Path, runs: list[str]
) -> None:
    small = _inference(app, tmp_path, ALICE, Small())
    _validate(app, ALICE, small)
    _submit(app, ALICE, small)
    assert runs == ["probe"]  # main: ["probe", "probe"]
    # another program under a pass of the same settings: measured, and refused
    hoarder = _inference(app, tmp_path, ALICE, Hoarder(), nonce="m")
    _validate(app, ALICE, _inference(app, tmp_path, ALICE, Small(), nonce="m"))
    with pytest.raises(SpecError, match="more than its task_memory_limit_bytes"):
        _submit(app, ALICE, hoarder)
    assert runs == ["probe"] * 3
    # the same program with another limit, or on another input: measured
    _validate(app, ALICE, _inference(app, tmp_path, ALICE, Small(), nonce="l"))
    _submit(app, ALICE, _inference(app, tmp_path, ALICE, Small(), nonce="l", task_memory_limit_bytes=LIMIT + 1))
    assert runs == ["probe"] * 5
    other_input = tmp_path / "other" / "x.safetensors"
    other_input.parent.mkdir()
    save_tensors({"x": torch.randn(300, WIDTH)}, other_input)
    _validate(app, ALICE, _inference(app, tmp_path, ALICE, Small(), nonce="i"))
    _submit(app, ALICE, _inference(app, other_input.parent, ALICE, Small(), nonce="i"))
    assert runs == ["probe"] * 7
    # Bob's submission of the very spec Alice validated (his own signature, blobs he uploaded): measured
    twin = _inference(app, tmp_path, ALICE, Small(), nonce="t")
    _validate(app, ALICE, twin)
    for ref in spec_blobs(parse_spec(twin)):  # Bob uploaded the same blobs
        app.store.blob_access.record_upload(BOB.address, ref, ref.size, 0)
    _submit(app, BOB, twin)
    assert runs == ["probe"] * 9


@pytest.mark.timeout(300)
def test_a_refused_validation_leaves_no_pass(app: Coordinator, tmp_path: Path, runs: list[str]) -> None:
    hoarder = _inference(app, tmp_path, ALICE, Hoarder())
    for call in (_validate, _submit):
        with pytest.raises(SpecError, match="more than its task_memory_limit_bytes"):
            call(app, ALICE, hoarder)
    assert runs == ["probe", "probe"]


@pytest.mark.timeout(300)
def test_a_validated_training_job_runs_its_measured_first_step_once(
    app: Coordinator, tmp_path: Path, runs: list[str]
) -> None:
    torch.manual_seed(0)
    program, dataset = tmp_path / "train.pt2", tmp_path / "digits.safetensors"
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    export_program(net.train(), (torch.randn(4, 64),), program)
    save_digits(dataset)
    spec = TrainingSpec(
        train_program=_owned(app, ALICE, program),
        dataset=_owned(app, ALICE, dataset),
        rounds=2,
        workers_per_round=2,
        inner_steps=4,
        batch_size=8,
        nonce="n",
        task_memory_limit_bytes=LIMIT,
    )
    raw = canonical_json(spec)
    _validate(app, ALICE, raw)
    assert _submit(app, ALICE, raw).tasks_total == 2
    assert runs == ["step"]  # main: ["step", "step"]
