"""The submitter SDK's training calls: submit a DiLoCo training job, follow its rounds, fetch its
weights. A part of tensorgrid.client.Client (whose uploads, submit, watch and downloads they use)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from tensorgrid.errors import TensorGridError
from tensorgrid.spec import JobSpec, TrainingSpec, validate_training
from tensorgrid.transfer import Progress
from tensorgrid.types import BlobRef, JobEvent, JobInfo
from tensorgrid.workloads.tensorfile import read_header


class _Client(Protocol):
    def upload(self, path: str | os.PathLike[str], progress: Progress | None = None) -> BlobRef: ...
    def download(self, ref: BlobRef, dest: str | os.PathLike[str], progress: Progress | None = None) -> Path: ...
    def submit(self, spec: JobSpec, tasks: int | None = None, escrow_deadline_s: int = ...) -> JobInfo: ...
    def job(self, job_id: str) -> JobInfo: ...
    def watch(self, job_id: str, after_seq: int = 0) -> Iterator[JobEvent]: ...
    def events_now(self, job_id: str, after_seq: int = 0) -> Iterator[JobEvent]: ...
    def result(self, job_id: str, dest: str | os.PathLike[str], progress: Progress | None = None) -> Path: ...


class TrainingCalls:
    def submit_training(
        self: _Client,
        train_program: str | os.PathLike[str],
        dataset: str | os.PathLike[str],
        *,
        eval_program: str | os.PathLike[str] | None = None,
        initial_weights: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        **settings: Any,
    ) -> JobInfo:
        """Upload a train-mode program, a dataset (features + labels, or tokens) and optionally an
        eval-mode program and starting weights, then submit a DiLoCo training job.

        settings are TrainingSpec fields (rounds, inner_steps, workers_per_round, batch_size,
        compression, quorum, inner_optimizer=AdamW(...), outer_optimizer=NesterovSGD(...), ...).
        On a chain-settled coordinator pass reward_per_task_wei: once the coordinator has
        validated the spec, the escrow is funded with reward × rounds × workers_per_round
        (one paid pseudo-gradient per worker per round), then the job is submitted.
        docs/TRAINING.md says what the program, the dataset and each setting must be.
        """
        blank = BlobRef("0" * 64, 0)
        draft = TrainingSpec(
            train_program=blank,
            dataset=blank,
            eval_program=blank if eval_program is not None else None,
            initial_weights=blank if initial_weights is not None else None,
            **settings,
        )
        validate_training(draft, read_header(dataset))  # bad settings and data fail before any upload
        refs = {
            "train_program": self.upload(train_program, progress),
            "dataset": self.upload(dataset, progress),
            "eval_program": self.upload(eval_program, progress) if eval_program is not None else None,
            "initial_weights": self.upload(initial_weights, progress) if initial_weights is not None else None,
        }
        return self.submit(TrainingSpec(**refs, **settings), tasks=draft.paid_tasks)  # type: ignore[arg-type]

    def watch_rounds(self: _Client, job_id: str, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Per-round metrics of a training job as rounds close, until the job ends:
        {"round", "rounds", "loss", "accuracy", "train_loss", "workers", "rows", "bytes_up", "weights"}
        (the last also has "final", "train_program" and "eval_program"). Raises if the job fails."""
        for event in self.watch(job_id, after_seq):
            if event.kind == "round":
                yield json.loads(event.message)
            elif event.state.finished and event.kind in ("failed", "cancelled"):
                raise TensorGridError(f"training job {job_id} {event.kind}: {event.message}")

    def round_metrics(self: _Client, job_id: str) -> list[dict[str, Any]]:
        """Metrics of every closed round of a training job so far (a live job: until its stream is quiet)."""
        return [json.loads(e.message) for e in self.events_now(job_id) if e.kind == "round"]

    def training_result(
        self: _Client,
        job_id: str,
        weights_dest: str | os.PathLike[str],
        program_dest: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> tuple[Path, Path | None]:
        """Download a finished training job's final weights (safetensors) and, with program_dest,
        its program (the eval-mode one when the job has it, else the train-mode one)."""
        weights = self.result(job_id, weights_dest, progress)
        if program_dest is None:
            return weights, None
        spec = TrainingSpec.parse(self.job(job_id).spec_json)
        program = self.download(spec.eval_program or spec.train_program, program_dest, progress)
        return weights, program
