"""The registry of job kinds: one line per kind. Adding a kind is its package and its line here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from coordinator.kinds.endpoint import EndpointKind
from coordinator.kinds.generation import GenerationKind
from coordinator.kinds.inference import InferenceKind
from coordinator.kinds.noop import NoopKind
from coordinator.kinds.training import TrainingKind
from coordinator.repositories.store import Store
from coordinator.services.kind import Kind
from coordinator.services.runtime import Runtime
from coordinator.services.verification.manager import Verification
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError


@dataclass(frozen=True)
class KindContext:
    """What kinds are built from (the composition root makes it)."""

    rt: Runtime
    store: Store
    blobs: BlobStore
    verification: Verification


def build_kinds(ctx: KindContext) -> Registry:
    return Registry(
        [
            NoopKind(),
            InferenceKind(ctx.verification, ctx.rt.hub),
            GenerationKind(ctx.verification, ctx.rt.hub),
            TrainingKind(ctx.rt, ctx.store, ctx.blobs, ctx.verification),
            EndpointKind(),
        ]
    )


class Registry:
    """Kinds by job kind and by the task kinds their jobs have."""

    def __init__(self, kinds: list[Kind]) -> None:
        self._kinds = {k.name: k for k in kinds}
        self._tasks = {task_kind: k for k in kinds for task_kind in k.task_kinds}

    def for_job(self, kind: str) -> Kind:
        try:
            return self._kinds[kind]
        except KeyError:
            raise SpecError(f"unknown job kind {kind!r}: this coordinator runs {sorted(self._kinds)}") from None

    def for_task(self, task_kind: str) -> Kind:
        try:
            return self._tasks[task_kind]
        except KeyError:
            raise SpecError(f"unknown task kind {task_kind!r}") from None

    def __iter__(self) -> Iterator[Kind]:
        return iter(self._kinds.values())
