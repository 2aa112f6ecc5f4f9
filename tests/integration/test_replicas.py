"""Two coordinator replicas on one PostgreSQL database and one shared data directory (blobs and
key): the replica the nodes work through is SIGKILLed while a training job, an inference job and a
paid endpoint are all in flight through it, and the other carries the three to their end. One
devnet and one kill for the three; each check is scoped to its own job, and the settlement
closes all three escrows at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tensorgrid.chain.client import ChainClient
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.devnet import ChainGrid, start_chain_grid
from tensorgrid.localgrid import COORDINATOR
from tensorgrid.serving.tensors import tensors_to_bytes
from tensorgrid.session import CoordinatorError
from tensorgrid.spec.verification import VerificationSpec
from tensorgrid.types import JobInfo, JobState
from tensorgrid.workloads.tensorfile import load_tensors
from tests.integration.conftest import BATCH, FAST, Assets, TrainingDigits, node_args, wait_for
from tests.integration.payments import credits, settled_once
from tests.integration.test_inference import assert_matches_local

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
REWARD = 10**15
PRICE = 10**12  # wei per endpoint request
CALLS = 8  # endpoint requests before the kill, and again after it
LAST = 3  # endpoint requests right before the kill
# The training job's rounds and pseudo-gradients per round. Its tasks go first (_submit_training),
# so its rounds close every few seconds whatever the inference job does: six of them outlast the
# inference job's first shards, which the kill waits for, with room to spare (at four, the kill
# came at ~40% of the training job on a loaded machine; at six, at ~25%).
ROUNDS, WORKERS = 6, 2
GAS = 10**16  # far above what funding and refunding the three escrows costs on anvil


@contextmanager
def _replicated_devnet(root: Path, pg_url: str) -> Iterator[tuple[ChainGrid, list[str]]]:
    """A devnet whose coordinator has a second replica on `pg_url`, and two staked nodes given
    both replicas' addresses (the first first). Yields the grid and the nodes' keys."""
    database = ("--database-url", pg_url)
    cg = start_chain_grid(root, 0, epoch_s=1.0, challenge_window_s=1, coordinator_args=(*FAST, *database))
    try:
        cg.grid.start_replica(pg_url)
        assert len(cg.grid.targets.split(",")) == 2
        node_keys = cg.anvil.keys[2:4]
        for i, key in enumerate(node_keys):
            cg.grid.start_node(f"node{i}", *cg.chain_args, *node_args(), private_key=key)
        cg.grid.wait_for_nodes(2)
        yield cg, node_keys
        for node in ("node0", "node1"):  # both kept working, through the replica left
            assert next(p for p in cg.grid.procs if p.name == node).alive()
    finally:
        cg.stop()  # now, not in the background: the database is dropped right after the test


def _open_endpoint(client: Client, assets: Assets) -> tuple[str, bytes]:
    """A paid endpoint on one node, called CALLS times through the first replica. Returns its id
    and a request's input."""
    endpoint = client.endpoints.create(
        assets.model,
        min_replicas=1,
        max_replicas=1,
        device="cpu",
        check_rate=0.0,  # no reruns: one replica, and the CPU stays with the jobs
        reward_per_task_wei=PRICE,
        max_requests=1000,
    )
    client.endpoints.wait_ready(endpoint, 1, timeout_s=120)
    wait_for(lambda: client.escrow(endpoint).locked, 30, "the endpoint's escrow lock")
    row = tensors_to_bytes({"pixels": load_tensors(assets.inputs)["pixels"][:2]})
    for _ in range(CALLS):
        client.endpoints.infer_bytes(endpoint, row, timeout_s=30)
    return endpoint, row


def _submit_training(client: Client, d: TrainingDigits) -> str:
    """A training job whose every pseudo-gradient is audited by the other node. Submitted before
    the inference job: leases go in job order, so each round's tasks (WORKERS, then their checks)
    are taken first as the round opens, and the inference shards fill the nodes between them."""
    return client.submit_training(
        d.train,
        d.dataset,
        eval_program=d.eval,
        rounds=ROUNDS,
        workers_per_round=WORKERS,
        inner_steps=20,
        quorum=1.0,
        device="cpu",
        verification=VerificationSpec(mode="replicate"),  # every result audited, paid once it passed
        reward_per_task_wei=REWARD,
    ).job_id


def _call_through_the_kill(client: Client, endpoint: str, row: bytes) -> tuple[int, float]:
    """CALLS requests right after the kill, each retried within its deadline as the SDK does.
    Returns (errors the caller saw, seconds to the first answer)."""
    killed = time.monotonic()
    first, errors, answered = 0.0, 0, 0
    while answered < CALLS and errors < CALLS:
        try:
            answer = client.endpoints.infer_bytes(endpoint, row, timeout_s=60)
        except CoordinatorError:
            errors += 1
            continue
        assert answer.output
        answered += 1
        first = first or time.monotonic() - killed
    return errors, first


def _kill_first_replica(cg: ChainGrid) -> None:
    """SIGKILL the replica the nodes work through: it holds leases, the outbox lock, perhaps a
    transaction signed and sent but not confirmed."""
    cg.grid.kill_proc(next(p for p in cg.grid.procs if p.name == COORDINATOR))


def _inference_paid_once(client: Client, pg_url: str, job: JobInfo, assets: Assets, out: Path) -> int:
    """The inference job ends well (watched through the replica left), each shard credited once.
    Returns the wei credited for it."""
    final = client.wait(job.job_id)  # the watch moved to the other replica
    assert final.state == JobState.SUCCEEDED, final.error
    assert final.tasks_done == final.tasks_total
    assert_matches_local(client.result(job.job_id, out), assets)
    counts, credited = credits(pg_url, job.job_id)
    assert counts and set(counts.values()) == {1}  # every credited task (and check) once
    v = final.verification  # each shard once, and the fee's wins (checkers', decoys')
    assert v is not None and credited == REWARD * (final.tasks_total - v.decoys) + v.fee_paid_wei
    return credited


def _training_paid_once(client: Client, pg_url: str, job_id: str, rounds: Iterator[dict[str, Any]]) -> int:
    """The training job's rounds after the first (`rounds`: its watch, opened before the kill)
    all close, each paid pseudo-gradient credited once. Returns the wei credited for it."""
    closed = 1 + sum(1 for _ in rounds)  # the rest, through the replica left
    final = client.job(job_id)
    assert final.state == JobState.SUCCEEDED, final.error
    assert closed == ROUNDS and len(client.round_metrics(job_id)) == ROUNDS
    counts, credited = credits(pg_url, job_id)
    assert counts and set(counts.values()) == {1}  # every paid pseudo-gradient once
    assert credited == REWARD * len(counts) <= REWARD * ROUNDS * WORKERS  # at most rounds × workers
    return credited


def _endpoint_billed_once(client: Client, pg_url: str, endpoint: str) -> int:
    """Every answered request billed once, once the endpoint is deleted. Returns the wei billed."""
    assert client.endpoints.delete(endpoint).state == "deleted"
    batches, billed = credits(pg_url, endpoint)
    assert batches and set(batches.values()) == {1}  # every micro-batch paid once
    assert billed == (2 * CALLS + LAST) * PRICE  # billed == answered: before the kill, around it, after
    return billed


@pytest.mark.timeout(600)
def test_killing_the_replica_the_nodes_use_loses_nothing(
    tmp_path: Path, pg_url: str, slow_digits: Assets, digits: Assets, digits_training: TrainingDigits
) -> None:
    """Killing the replica the nodes use, with a training job, an inference job and a paid
    endpoint all under way through it, loses nothing:
    - the inference job ends with the result local inference gives, each shard credited once; the
      submitter's client, given both addresses, watches it to its end through the replica left;
    - the training job's rounds go on through the replica left until all have closed, each paid
      pseudo-gradient credited once;
    - the endpoint, called through the first replica (the last calls right before the kill, likely
      counted there and not yet written: their node hands them on) and then through the one left
      once the nodes re-attached their Serve streams there, shows the caller no error, and every
      answered request is billed once;
    - each escrow is charged what its job was credited (a shard or pseudo-gradient once, plus the
      checkers' fee wins; a request once), every charged wei reaches a node, the rest goes back to
      the submitter, and the contract owes nothing."""
    with _replicated_devnet(tmp_path / "devnet", pg_url) as (cg, node_keys):
        signer = Signer.from_hex(cg.submitter_key)
        chain = ChainClient.connect(cg.anvil.rpc_url, cg.deployment, signer.private_key)
        before = chain.balance()
        with Client(cg.grid.targets, signer, chain=chain, ca_cert=cg.grid.ca_cert) as client:
            endpoint, row = _open_endpoint(client, digits)  # a small program: a quick start
            training = _submit_training(client, digits_training)
            rounds = client.watch_rounds(training)
            next(rounds)  # round 0 closed: the next one is open, its tasks leased or being trained
            # Submitted only now, and 60 tasks, so the kill below finds it under way: 20 tasks
            # submitted with the training job once all ran while round 0 closed.
            job = client.submit_inference(
                slow_digits.model,
                slow_digits.inputs,
                shard_rows=200,
                batch_size=BATCH,
                device="cpu",
                reward_per_task_wei=REWARD,
            )
            assert client.target == cg.grid.target  # sticky to the first replica while it answers
            wait_for(lambda: client.job(job.job_id).tasks_done >= 3, 180, "the inference job to be under way")
            for _ in range(LAST):  # answered, receipted, most likely not yet written by the first replica:
                client.endpoints.infer_bytes(endpoint, row, timeout_s=30)  # its node hands them to the other
            time.sleep(0.3)  # their receipts reach the first replica (it writes credits once a second)
            _kill_first_replica(cg)
            inference, trained = client.job(job.job_id), client.job(training)  # asked of the replica left
            print(
                f"at the kill: {inference.tasks_done}/{inference.tasks_total} inference tasks done,",
                f"{trained.tasks_done}/{ROUNDS * WORKERS} training tasks",
            )
            assert inference.tasks_done < inference.tasks_total and not trained.state.finished  # both under way
            # the endpoint answers through the replica left once a node re-attached there
            errors, first_s = _call_through_the_kill(client, endpoint, row)
            print(f"endpoint: first answer {first_s:.2f} s after the kill, {errors} errors seen by the caller")
            assert errors == 0
            credited = _inference_paid_once(client, pg_url, job, slow_digits, tmp_path / "y.safetensors")
            assert client.target != cg.grid.target
            credited += _training_paid_once(client, pg_url, training, rounds)
            billed = _endpoint_billed_once(client, pg_url, endpoint)
            charged = settled_once(
                cg.anvil, cg.deployment, node_keys, client, [job.job_id, training], endpoints=[endpoint]
            )
            assert charged == credited + billed
            assert 0 <= before - chain.balance() - charged < GAS  # the rest of the three escrows came back
