"""The referee on a generation check (Verification._reexecute, its replay and scoring run in
process here; in the coordinator they run in its sandboxed child): an honest agreement of two
untrusted nodes is confirmed by scoring alone, without decoding; a colluding pair's changed token,
a lying checker, and a scoring that fails are ruled on a full re-run, as before scoring existed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.repositories.verification.rulings import RulingInfo
from coordinator.services.verification.manager import Verification
from tensorgrid.blobs import BlobStore
from tensorgrid.workloads.generation import DecodeSettings, run_generation
from tensorgrid.workloads.prompts import job_seeds
from tensorgrid.workloads.scoring import score_generation
from tensorgrid.workloads.tensorfile import gather_rows, load_tensors, save_tensors
from tests.decoders import export_decoder, tiny_decoder

V = 50
SETTINGS = DecodeSettings(8, V, temperature=0.9, top_k=20, seed=2, stop_tokens=(7,))
SUBJECT, CHECKER = "0x" + "aa" * 20, "0x" + "bb" * 20
ROWS = [5, 1, 9]  # the check's sample of the subject's shard


@dataclass
class Referee:
    """The job's blobs and a Verification whose replay and scoring count their calls."""

    blobs: BlobStore
    model: str
    shard: str
    check: str
    subject: str
    replays: int = 0
    scores: int = 0
    fail_scoring: bool = False
    verification: Any = field(init=False)

    def __post_init__(self) -> None:
        self.verification = Verification(_Runtime(), None, self.blobs, b"secret", None)  # type: ignore[arg-type]
        self.verification.add_replay("generation", self._replay, score=self._score)

    def _replay(self, model: Path, source: Path, out: Path, settings: dict[str, Any]) -> None:
        self.replays += 1
        run_generation(model, source, out, DecodeSettings.from_dict(settings["generation"]), device="cpu")

    def _score(self, model: Path, source: Path, claim: Path, out: Path, settings: dict[str, Any]) -> list[bool]:
        self.scores += 1
        if self.fail_scoring:
            raise RuntimeError("the scoring child died")
        return score_generation(model, source, claim, out, DecodeSettings.from_dict(settings["generation"]))

    def output(self, tensors: dict[str, torch.Tensor], tmp: Path) -> str:
        save_tensors(tensors, tmp / "o.safetensors")
        return self.blobs.put_file(tmp / "o.safetensors").sha256

    def rule(self, subject: str, checker: str, confirmation: bool) -> tuple[Any, str]:
        info = RulingInfo(
            check_id="c" * 64,
            job_id="j" * 64,
            model_sha=self.model,
            input_sha=self.check,
            settings={"task_kind": "generation", "generation": SETTINGS.to_dict()},
            subject_output=subject,
            rows=ROWS,
            checkers=[(CHECKER, checker)],
            rows_limit=len(ROWS) if confirmation else 0,  # a confirmation re-runs the check's rows
            shard_sha=self.shard,
            subject_node=SUBJECT,
        )
        return self.verification._reexecute(info)


class _Runtime:
    db = work = None  # _reexecute uses neither


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoder, a shard, the check's rows and the subject's honest output: made once a module."""
    root = tmp_path_factory.mktemp("job")
    export_decoder(tiny_decoder(), root / "decoder.pt2")
    g = torch.Generator().manual_seed(1)
    shard = {
        "tokens": torch.randint(0, V, (12, 6), generator=g),
        "lengths": torch.randint(1, 7, (12,), generator=g),
        "seeds": torch.from_numpy(job_seeds(SETTINGS.seed, 24, 36)),
    }
    save_tensors(shard, root / "shard.safetensors")
    gather_rows(root / "shard.safetensors", ROWS, root / "check.safetensors")
    run_generation(root / "decoder.pt2", root / "shard.safetensors", root / "out.safetensors", SETTINGS)
    return root


@pytest.fixture
def referee(job: Path, tmp_path: Path) -> Referee:
    blobs = BlobStore(tmp_path / "blobs")
    put = blobs.put_file
    return Referee(
        blobs,
        put(job / "decoder.pt2").sha256,
        put(job / "shard.safetensors").sha256,
        put(job / "check.safetensors").sha256,
        put(job / "out.safetensors").sha256,
    )


def rows_of(referee: Referee, sha: str) -> dict[str, torch.Tensor]:
    tensors = load_tensors(referee.blobs.path_for(sha))
    return {k: v[ROWS] for k, v in tensors.items()}


def test_an_honest_agreement_is_confirmed_by_scoring_without_a_decode(referee: Referee, tmp_path: Path) -> None:
    checker = referee.output(rows_of(referee, referee.subject), tmp_path)  # an honest checker's rows
    ruling, how = referee.rule(referee.subject, checker, confirmation=True)
    assert how == "scored" and (referee.scores, referee.replays) == (1, 0)
    assert ruling.subject_right and ruling.right_checkers == (CHECKER,) and not ruling.reason


def test_a_colluding_pairs_changed_token_is_caught_on_a_full_re_run(referee: Referee, tmp_path: Path) -> None:
    lie = load_tensors(referee.blobs.path_for(referee.subject))
    last = (lie["lengths"] - 1).clamp(min=0)
    lie["tokens"][torch.arange(12), last] = (lie["tokens"][torch.arange(12), last] + 1) % V
    subject = referee.output(lie, tmp_path)
    checker = referee.output({k: v[ROWS] for k, v in lie.items()}, tmp_path)  # agrees with the lie
    ruling, how = referee.rule(subject, checker, confirmation=True)
    assert how == "re-run" and referee.scores == 1
    assert referee.replays == 3  # the check's rows, then the subject's shard twice before blaming
    assert not ruling.subject_right and ruling.right_checkers == () and not ruling.reason


def test_a_lying_checker_is_ruled_on_a_full_re_run(referee: Referee, tmp_path: Path) -> None:
    lie = rows_of(referee, referee.subject)
    lie["tokens"][0, 0] = (lie["tokens"][0, 0] + 1) % V
    ruling, how = referee.rule(referee.subject, referee.output(lie, tmp_path), confirmation=False)
    assert how == "re-run" and referee.replays == 3  # blaming anyone takes the re-run and soundness
    assert ruling.subject_right and ruling.right_checkers == ()


def test_a_scoring_that_fails_falls_back_to_the_re_run(referee: Referee, tmp_path: Path) -> None:
    referee.fail_scoring = True
    checker = referee.output(rows_of(referee, referee.subject), tmp_path)
    ruling, how = referee.rule(referee.subject, checker, confirmation=True)
    assert how == "re-run" and referee.replays == 1
    assert ruling.subject_right and ruling.right_checkers == (CHECKER,)
