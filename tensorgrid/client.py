"""The submitter SDK: upload blobs, submit signed job specs, watch them, fetch results.

from tensorgrid.client import Client
with Client("127.0.0.1:7070") as c:
    job = c.submit_inference("model.pt2", "inputs.safetensors", shard_rows=512)
    for event in c.watch(job.job_id):
        print(event.kind, event.tasks_done, "/", event.tasks_total)
    c.result(job.job_id, "outputs.safetensors")
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from tensorgrid import serde
from tensorgrid.client_training import TrainingCalls
from tensorgrid.client_watching import WatchCalls
from tensorgrid.crypto import Signer, cancel_message, sign_message, submit_message
from tensorgrid.endpoints import Endpoints
from tensorgrid.errors import TensorGridError
from tensorgrid.failover import FailoverChannel
from tensorgrid.infer_stream import BlockingInferStream
from tensorgrid.retry import backoff
from tensorgrid.session import (  # noqa: F401 -- the SDK's errors, importable from here
    CoordinatorError,
    Metadata,
    Session,
    SubmitInterrupted,
    Validated,
    call,
    unauthenticated,
    wrap,
)
from tensorgrid.spec import (
    GenerationSpec,
    InferenceSpec,
    JobSpec,
    NoopSpec,
    canonical_json,
    job_id_for,
    spec_hash,
    validate,
)
from tensorgrid.spec.verification import fee_tasks
from tensorgrid.tls import ClientTls
from tensorgrid.transfer import Progress, Transfer
from tensorgrid.types import BlobRef, Earnings, JobInfo, NodeStatus
from tensorgrid.v1 import submit_pb2, submit_pb2_grpc
from tensorgrid.workloads.tensorfile import batch_rows, read_header

if TYPE_CHECKING:
    import torch

    from tensorgrid.chain.client import ChainClient

SUBMIT_RETRY_S = 30.0


class Client(TrainingCalls, WatchCalls):
    """A connection to one coordinator (or to several replicas of one: `a:7070,b:7070`), acting
    for one submitter key."""

    def __init__(
        self,
        target: str,
        signer: Signer | None = None,
        timeout: float = 60.0,
        chain: ChainClient | None = None,
        *,
        ca_cert: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        bulk: str = "auto",
    ) -> None:
        """chain: the submitter's handle on the contracts (same key as signer), when the
        coordinator settles on chain; submit then funds each job's escrow first.
        ca_cert: PEM the coordinator's TLS certificate must chain to (None: the system's roots);
        insecure: plain text to any address (tensorgrid.tls has the rule).
        bulk: how blobs of 1 MiB or more move (tensorgrid.blobs.bulk): "auto" over the
        coordinator's bulk port when it has one, else over gRPC; "off": always gRPC; "only":
        every blob over the bulk port, an error if there is none."""
        self.tls = ClientTls(Path(ca_cert) if ca_cert is not None else None, insecure)
        self.signer = signer or Signer.generate()
        self.chain = chain
        if chain is not None and chain.address.lower() != self.signer.address.lower():
            raise TensorGridError("the chain client must use the submitter's key")
        self.timeout = timeout
        # An escrow is funded, the coordinator unreachable: retry SubmitJob this long (it may be
        # restarting), then raise SubmitInterrupted.
        self.submit_retry_s = SUBMIT_RETRY_S
        # One address or several replicas (`a:7070,b:7070`): calls follow the one that answers.
        self._channel = FailoverChannel(target, self.tls)
        self._stub = self.stub = submit_pb2_grpc.SubmitterServiceStub(self._channel)
        self.session = Session(self._stub, self.signer, timeout)
        self.transfer = Transfer(self._stub, self.session, lambda: self.target, self.tls, bulk, timeout)
        # endpoint calls go on one open stream, opened by the first (tensorgrid.infer_stream)
        self.infer_stream = BlockingInferStream(self._stub, self.session.metadata)

    @property
    def target(self) -> str:
        """The coordinator replica this client talks to now (the first of its list that answers)."""
        return self._channel.targets.current

    def close(self) -> None:
        self.infer_stream.close()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- session -------------------------------------------------------------------------------
    def session_metadata(self) -> Metadata:
        """The session metadata of the next call, opening (or renewing) the session first if needed."""
        return self.session.metadata()

    def open_session(self) -> None:
        """Prove to the coordinator that this client holds the submitter key (the SDK does it on
        the first call and again whenever the session ends)."""
        self.session.open()

    def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        return self.session.unary(method, request, timeout)

    # ---- endpoints (tensorgrid.endpoints) -------------------------------------------------------
    @property
    def endpoints(self) -> Endpoints:
        """Create, call and delete real-time endpoints (docs/SERVING.md)."""
        return Endpoints(self)

    def infer(self, endpoint_id: str, tensors: Mapping[str, torch.Tensor] | bytes, **kw: Any) -> dict[str, Any]:
        """One real-time request to an endpoint: its outputs (Endpoints.infer)."""
        return self.endpoints.infer(endpoint_id, tensors, **kw)

    def generate(self, endpoint_id: str, prompt: Sequence[int], **kw: Any) -> Iterator[list[int]]:
        """Stream the tokens a generation endpoint decodes after prompt (Endpoints.generate)."""
        return self.endpoints.generate(endpoint_id, prompt, **kw)

    # ---- blobs ---------------------------------------------------------------------------------
    def upload(self, path: str | os.PathLike[str], progress: Progress | None = None) -> BlobRef:
        """Send a file to the coordinator (tensorgrid.transfer); returns its BlobRef."""
        return self.transfer.upload(path, progress)

    def download(self, ref: BlobRef, dest: str | os.PathLike[str], progress: Progress | None = None) -> Path:
        """Fetch a blob to dest, resuming a partial dest.part, and check its hash."""
        return self.transfer.download(ref, dest, progress)

    # ---- jobs ----------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, tasks: int | None = None, escrow_deadline_s: int = 7 * 24 * 3600) -> JobInfo:
        """Sign and submit a spec whose blobs are uploaded. Submitting the same spec again is a no-op.

        With a chain client and a reward, the coordinator first validates the spec (ValidateJob:
        everything SubmitJob checks but the escrow) and says how many results the job may pay
        for; only then is the escrow (reward × that many) funded, and the job submitted. `tasks`,
        when given, is the most this submitter agrees to fund. Should the submit still be refused,
        the escrow just funded is refunded (no task can have been leased for it).
        """
        validate(spec)
        spec_json = canonical_json(spec)
        sig = sign_message(self.signer, submit_message(spec_hash(spec_json)))
        req = submit_pb2.SubmitJobRequest(spec_json=spec_json, submitter=self.signer.address, signature=sig)
        if self.chain is None or spec.reward_per_task_wei <= 0:
            return serde.job_from_pb(self._unary(self._stub.SubmitJob, req, timeout=self.timeout * 10))
        checked = self.validate_job(spec, req)
        if tasks is not None and checked.paid_tasks > tasks:
            raise TensorGridError(
                f"the coordinator wants an escrow for {checked.paid_tasks} paid results; this job has {tasks}: "
                "nothing was funded"
            )
        funded = self._fund(spec_json, spec.reward_per_task_wei, checked.paid_tasks, escrow_deadline_s)
        give_up = time.monotonic() + self.submit_retry_s
        for failures in itertools.count(1):
            try:
                return serde.job_from_pb(self._unary(self._stub.SubmitJob, req, timeout=self.timeout * 10))
            except CoordinatorError as e:
                if e.code != grpc.StatusCode.UNAVAILABLE:
                    if funded:  # refused for good: take the money back
                        raise CoordinatorError(e.code, f"{e} (its escrow was {self._refund(checked.job_id)})") from None
                    raise
                if time.monotonic() >= give_up:  # the escrow stays: the job can be submitted again
                    raise SubmitInterrupted(
                        e.code,
                        f"the escrow of job {checked.job_id} is funded, but the coordinator did not take the job: "
                        f"{e}. Submit the same spec again once it is back (client.submit(e.spec, tasks=e.tasks): "
                        "the escrow is not funded twice), or cancel the escrow for a refund",
                        spec=spec,
                        tasks=checked.paid_tasks,
                        job_id=checked.job_id,
                    ) from None
                time.sleep(min(backoff(failures, 0.25, cap=2.0), max(0.0, give_up - time.monotonic())))
        raise AssertionError("unreachable")

    def validate_job(self, spec: JobSpec, request: submit_pb2.SubmitJobRequest | None = None) -> Validated:
        """Ask the coordinator whether it would take this spec (its blobs uploaded), storing nothing:
        CoordinatorError says why not; else the job id, its planned tasks and the results its
        escrow must cover. No escrow is needed to ask."""
        if request is None:
            validate(spec)
            spec_json = canonical_json(spec)
            sig = sign_message(self.signer, submit_message(spec_hash(spec_json)))
            request = submit_pb2.SubmitJobRequest(spec_json=spec_json, submitter=self.signer.address, signature=sig)
        m = self._unary(self._stub.ValidateJob, request, timeout=self.timeout * 10)
        return Validated(job_id=m.job_id, tasks=m.tasks, paid_tasks=m.paid_tasks, exists=m.exists)

    def _fund(self, spec_json: bytes, reward_per_task: int, tasks: int, deadline_s: int) -> bool:
        """Create the job's escrow unless it exists; True if this call created it."""
        from tensorgrid.chain.client import JobStatus

        assert self.chain is not None
        sh = spec_hash(spec_json)
        job_id = job_id_for(self.signer.address, sh)
        if self.chain.job(job_id).status != JobStatus.NONE:  # a resubmission is already funded
            return False
        deadline = self.chain.chain_time() + deadline_s
        self.chain.create_job(job_id, sh, deadline, reward_per_task * tasks, reward_per_task=reward_per_task)
        return True

    def _refund(self, job_id: str) -> str:
        """Cancel an escrow no task was leased for; says what happened, for an error message."""
        from tensorgrid.chain.errors import ChainError

        assert self.chain is not None
        try:
            self.chain.cancel(job_id)
        except ChainError as e:
            return f"not refunded ({e}): cancel it with tensorgrid.chain's cancel"
        return "refunded"

    def escrow(self, job_id: str) -> Any:
        """The job's escrow on chain (budget, charged, status, result hash)."""
        if self.chain is None:
            raise TensorGridError("no chain client: this Client does not settle on chain")
        return self.chain.job(job_id)

    def submit_inference(
        self,
        model: str | os.PathLike[str],
        inputs: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        **settings: Any,
    ) -> JobInfo:
        """Upload a .pt2 program and a safetensors file, then submit an inference job over them."""
        spec = InferenceSpec(model=BlobRef("0" * 64, 0), inputs=BlobRef("0" * 64, 0), **settings)
        validate(spec)  # fail on bad settings before uploading gigabytes
        rows = batch_rows(read_header(inputs))
        model_ref = self.upload(model, progress)
        inputs_ref = self.upload(inputs, progress)
        shards = -(-rows // spec.shard_rows)  # each once, and the fee that pays their checkers
        return self.submit(
            InferenceSpec(model=model_ref, inputs=inputs_ref, **settings),
            tasks=shards + fee_tasks(spec.verification, shards, spec.shard_rows),
        )

    def submit_generation(
        self,
        model: str | os.PathLike[str],
        prompts: str | os.PathLike[str],
        *,
        vocab_size: int,
        progress: Progress | None = None,
        **settings: Any,
    ) -> JobInfo:
        """Upload a decoder (.pt2: tokens [B, T] int64 → logits [B, T, vocab_size]) and a prompt file
        (`tokens` [N, Tmax] int64 + `lengths` [N] int64), then submit a generation job.

        settings are GenerationSpec fields: max_new_tokens, temperature (0: greedy), top_k, top_p,
        seed, stop_tokens, shard_prompts, batch_size, verification, ... The result holds `tokens`
        [N, max_new_tokens], `logprobs` and `lengths` (docs/GENERATION.md).
        """
        from tensorgrid.workloads.generation import check_prompts
        from tensorgrid.workloads.tensorfile import load_tensors

        blank = BlobRef("0" * 64, 0)
        spec = GenerationSpec(model=blank, prompts=blank, vocab_size=vocab_size, **settings)
        validate(spec)  # bad settings and prompts fail before any upload
        n = check_prompts(load_tensors(prompts), vocab_size, submitted=True)
        if n == 0:
            raise TensorGridError("the prompt file has no prompts")
        model_ref, prompts_ref = self.upload(model, progress), self.upload(prompts, progress)
        return self.submit(
            GenerationSpec(model=model_ref, prompts=prompts_ref, vocab_size=vocab_size, **settings),
            tasks=(shards := -(-n // spec.shard_prompts)) + fee_tasks(spec.verification, shards, spec.shard_prompts),
        )

    def submit_noop(self, tasks: int, **settings: Any) -> JobInfo:
        return self.submit(NoopSpec(tasks=tasks, **settings), tasks=tasks)

    def job(self, job_id: str) -> JobInfo:
        """A job of this submitter (CoordinatorError NOT_FOUND for anyone else's, as for none)."""
        return serde.job_from_pb(self._unary(self._stub.GetJob, submit_pb2.GetJobRequest(job_id=job_id)))

    def jobs(self, submitter: str = "", limit: int = 50) -> list[JobInfo]:
        """This submitter's jobs, newest first (the operator: everyone's, or `submitter`'s)."""
        resp = self._unary(self._stub.ListJobs, submit_pb2.ListJobsRequest(submitter=submitter, limit=limit))
        return [serde.job_from_pb(j) for j in resp.jobs]

    def nodes(self) -> list[NodeStatus]:
        """The grid's nodes and their record."""
        resp = call(self._stub.ListNodes, submit_pb2.ListNodesRequest(), timeout=self.timeout)
        return [serde.node_from_pb(n) for n in resp.nodes]

    def earnings(self, address: str) -> Earnings:
        """A node's earnings and the proof to claim what is posted on chain."""
        m = call(self._stub.GetEarnings, submit_pb2.GetEarningsRequest(address=address), timeout=self.timeout)
        return Earnings(
            address=m.address,
            cumulative_wei=int(m.cumulative_wei or 0),
            pending_wei=int(m.pending_wei or 0),
            claim_epoch=m.claim_epoch,
            claim_cumulative_wei=int(m.claim_cumulative_wei or 0),
            claim_proof=[bytes(p) for p in m.claim_proof],
            slashed_wei=int(m.slashed_wei or 0),
        )

    def cancel(self, job_id: str) -> JobInfo:
        """Stop the job on the coordinator, then take back what its escrow has left.

        An escrow no task was leased for is refunded here at once. Once work started the escrow is
        locked on chain: the coordinator charges the work done, then releases the rest to the
        submitter (watch `escrow(job_id)` leave OPEN); a finished job's escrow is settled as usual.
        """
        sig = sign_message(self.signer, cancel_message(job_id))
        req = submit_pb2.CancelJobRequest(job_id=job_id, signature=sig)
        job = serde.job_from_pb(self._unary(self._stub.CancelJob, req))
        self.take_back_escrow(job_id)
        return job

    def take_back_escrow(self, job_id: str) -> None:
        """Refund a stopped job's escrow now if no work locked it (else the coordinator releases
        what is left after charging the work done). No-op without a chain handle."""
        if self.chain is None:
            return
        from tensorgrid.chain.client import JobStatus
        from tensorgrid.chain.errors import ContractReverted

        escrow = self.chain.job(job_id)
        if escrow.status == JobStatus.OPEN and (not escrow.locked or escrow.deadline < self.chain.chain_time()):
            try:
                self.chain.cancel(job_id)
            except ContractReverted as e:  # locked meanwhile: the coordinator releases it instead
                if e.error != "LockedUntilDeadline":
                    raise
