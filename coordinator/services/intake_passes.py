"""Intake's memory of measured runs that passed: a chain submission is ValidateJob, then (once the
escrow is funded) SubmitJob of the very same signed spec, and both ran the job's program in a fresh
measured child (kinds/memory.py: inference's probe, generation's first decoding, training's first
inner step). A pass of ValidateJob's plan and vet is remembered for PASS_TTL_S, so the SubmitJob
that follows plans without the measured run and skips the vet (services.intake).

What a pass stands for is keyed by all it depended on: the submitter (another submitter's pass of
the same spec is not theirs to use, nor to learn of by how fast their SubmitJob answers), the spec's
hash (its program's, inputs', dataset's and weights' blob hashes, its task_memory_limit_bytes, batch
and shard sizes, device and every other setting: blobs are content-addressed, so a hash names one
content), and the coordinator's own settings the run is made under (`settings`: the referee's
limits, intake's limits, the review margin). Only passes are kept: a refused spec is measured again
each time, as before.

Bounded: at most MAX_PASSES in all and MAX_PER_SUBMITTER a submitter (its own oldest goes first), the
oldest overall first past that, and each is taken once. Filling it costs a measured validation
each (intake's validation slots: one per submitter, --max-validations in all), and what an
eviction costs its owner is the run this memory saves, no more: a SubmitJob that finds no pass
measures its program as before.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

PASS_TTL_S = 600.0  # ValidateJob, the escrow's transaction and its receipt, then SubmitJob
MAX_PASSES = 256
MAX_PER_SUBMITTER = 4


class MeasuredPasses:
    """Passed measured runs of (submitter, spec hash) under `settings`, each for PASS_TTL_S, taken once."""

    def __init__(
        self,
        ttl_s: float = PASS_TTL_S,
        size: int = MAX_PASSES,
        per_submitter: int = MAX_PER_SUBMITTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s, self.size, self.per_submitter, self.clock = ttl_s, size, per_submitter, clock
        self._passes: OrderedDict[bytes, tuple[str, float]] = OrderedDict()  # key → (submitter, expiry), oldest first

    def __len__(self) -> int:
        return len(self._passes)

    def add(self, submitter: str, sh: str, settings: str) -> None:
        """Remember that `submitter`'s spec `sh` passed its measured run under `settings`."""
        now = self.clock()
        self._drop_expired(now)
        key = _key(submitter, sh, settings)
        self._passes.pop(key, None)
        own = [k for k, (who, _) in self._passes.items() if who == submitter]
        for k in own[: max(0, len(own) - self.per_submitter + 1)]:
            del self._passes[k]
        while len(self._passes) >= self.size:
            self._passes.popitem(last=False)
        self._passes[key] = (submitter, now + self.ttl_s)

    def take(self, submitter: str, sh: str, settings: str) -> bool:
        """Whether such a pass is remembered and unexpired; it is forgotten either way."""
        now = self.clock()
        self._drop_expired(now)
        return self._passes.pop(_key(submitter, sh, settings), None) is not None

    def _drop_expired(self, now: float) -> None:
        while self._passes:
            key, (_, expiry) = next(iter(self._passes.items()))
            if expiry > now:
                return
            del self._passes[key]


def _key(submitter: str, sh: str, settings: str) -> bytes:
    """A fixed-size key of everything a pass depends on (each part length-prefixed: no two
    different triples join to the same text)."""
    h = hashlib.sha256()
    for part in (submitter, sh, settings):
        raw = part.encode()
        h.update(len(raw).to_bytes(8, "big") + raw)
    return h.digest()
