"""A node daemon SIGKILLed mid-task and started again with the same key: the leases its previous
run held are reissued at its new session's first heartbeat (repositories.heartbeats), seconds
after the restart, not a lease TTL later; the job then completes, equal to local inference.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.types import JobState
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
