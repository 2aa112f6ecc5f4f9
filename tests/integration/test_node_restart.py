"""A node daemon SIGKILLed mid-task and started again with the same key: the leases its previous
run held are reissued at its new session's first heartbeat (repositories.heartbeats), seconds
after the restart, not a lease TTL later; the job then completes, equal to local inference.
A result the earlier run finished and kept, handed in after that release, is taken while no
other node's result is in (tasks.lost_lease). On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.types import BlobRef, Capabilities, JobState, Lease
from tests.integration.conftest import Assets, node_args
from tests.integration.test_inference import assert_matches_local, submit_slow

pytestmark = pytest.mark.integration
TTL_S = 60  # what the leases would wait for without the release: far beyond the restart
WITHIN_S = 25  # the restart (a process start, importing the daemon, registering) and one heartbeat


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_restarted_nodes_leases_are_reissued_at_its_first_heartbeat_not_after_their_ttl(
    request: pytest.FixtureRequest,
    database: str,
    make_grid: Callable[..., LocalGrid],
    slow_digits: Assets,
    tmp_path: Path,
) -> None:
    db = ("--database-url", request.getfixturevalue("pg_url")) if database == "postgres" else ()
    grid = make_grid("--lease-ttl-ms", str(TTL_S * 1000), *db)
    grid.start_coordinator()
    victim = grid.start_node("victim", *node_args())
    with grid.client(Signer.generate()) as client:
        job = submit_slow(client, slow_digits)
        seq = 0
        for ev in client.watch(job.job_id):
            seq = ev.seq
            if ev.kind == "running":  # the victim holds leases now (its task worker is starting)
                break
        time.sleep(0.5)
        grid.kill_proc(victim)  # SIGKILL, its task worker with it
        killed = time.monotonic()
        assert client.job(job.job_id).tasks_done < 12
        victim = grid.restart(victim)  # the same key and data directory
        reissued = []
        for ev in client.watch(job.job_id, after_seq=seq):
            if ev.kind == "reissued":
                reissued.append((time.monotonic() - killed, ev.message, ev.node))
                break
        assert reissued, "the job ended without a reissue"
        after_s, message, node = reissued[0]
        print(f"reissued {after_s:.1f} s after the kill ({database})")
        assert after_s < WITHIN_S, f"reissued {after_s:.1f} s after the kill (lease TTL {TTL_S} s): {message}"
        assert "restarted" in message, message
        grid.start_node("rescuer", *node_args())  # the victim may not take its failed tasks for 30 s
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        assert final.tasks_done == final.tasks_total == 12
        client.result(job.job_id, tmp_path / "out.safetensors")
        (status,) = [n for n in client.nodes() if n.address == node]
        assert status.failures >= 1  # each lease left behind counts as an expiry would
    assert_matches_local(tmp_path / "out.safetensors", slow_digits)
    assert "registered" in victim.log_path.read_text()


EMPTY = BlobRef(hashlib.sha256(b"").hexdigest(), 0)  # a no-op task's output
CPU = Capabilities(device_kind="cpu", memory_bytes=1 << 30, cpu_cores=1)


async def _late_results(target: str, key: Signer) -> dict[str, object]:
    """`key`'s first run leases both tasks of a no-op job and finishes them, then is gone; its
    second run registers and heartbeats (both leases released as left behind). Another node
    leases one of them again. The kept results then come in: the one nobody took, then the one
    the other node holds but has not handed in; then the other node's own result."""
    first, second, other = NodeClient(target, key), NodeClient(target, key), NodeClient(target, Signer.generate())
    try:
        await first.register(CPU)
        leases: list[Lease] = []
        while len(leases) < 2:
            leases += (await first.lease(2 - len(leases), wait_ms=2_000))[0]
        kept = [first.sign(lease, EMPTY) for lease in sorted(leases, key=lambda x: x.task_id)]
        await second.register(CPU)
        await second.heartbeat([])  # the first run's leases are released (repositories.heartbeats)
        await other.register(CPU)
        taken: list[Lease] = []
        while not taken:
            taken = (await other.lease(1, wait_ms=2_000))[0]
        (unleased,) = [r for r in kept if r.task_id != taken[0].task_id]
        (released,) = [r for r in kept if r.task_id == taken[0].task_id]
        return {
            "unleased": await second.submit(unleased, 0, b""),
            "leased_again": await second.submit(released, 0, b""),
            "other_revoked": await other.heartbeat([(taken[0].task_id, taken[0].attempt)]),
            "other": await other.submit(other.sign(taken[0], EMPTY), 0, b""),
            "other_address": other.signer.address,
            "attempts": (released.attempt, taken[0].attempt),
            "taken": (taken[0].task_id, taken[0].attempt),
        }
    finally:
        for c in (first, second, other):
            await c.close()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_kept_result_handed_in_after_the_release_is_taken_unless_another_nodes_result_is_in(
    request: pytest.FixtureRequest, database: str, make_grid: Callable[..., LocalGrid]
) -> None:
    db = ("--database-url", request.getfixturevalue("pg_url")) if database == "postgres" else ()
    grid = make_grid("--lease-ttl-ms", str(TTL_S * 1000), *db)
    grid.start_coordinator()
    key = Signer.generate()
    with grid.client(Signer.generate()) as client:
        job = client.submit_noop(2)
        out = asyncio.run(_late_results(grid.target, key))
        assert out["unleased"] == (True, ""), out  # nobody had taken it: the kept result counts
        assert out["leased_again"] == (True, ""), out  # taken from a lease with no result yet
        assert out["attempts"] == (1, 2)
        assert out["other_revoked"] == [out["taken"]], out  # the other node hears its lease is over
        assert out["other"][0] is False, out  # the other node's result comes after: refused
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED and final.tasks_done == final.tasks_total == 2
        nodes = {n.address: n for n in client.nodes()}
        assert nodes[key.address].completed == 2  # paid once each
        other = nodes[str(out["other_address"])]
        assert (other.completed, other.failures, other.rejections) == (0, 0, 0)  # not held against it
