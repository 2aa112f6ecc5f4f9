"""tensorgrid.serving.trace (off unless asked, one file per process, collections stamped) and
benchmarks._serving_trace (a request's hops from its stamps, what overlapped the slowest)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._serving_trace import HOPS, analyse
from tensorgrid.serving import trace


@pytest.fixture(autouse=True)
def _off() -> Iterator[None]:
    trace.stop()
    yield
    trace.stop()


def test_without_the_variable_nothing_is_stamped(tmp_path: Path) -> None:
    assert trace.start("coordinator", {}) is False
    trace.stamp("c.in", 1)
    trace.stop()
    assert not trace.enabled() and list(tmp_path.iterdir()) == []


def test_stamps_and_collections_land_in_the_processs_file(tmp_path: Path) -> None:
    assert trace.start("agent", {trace.ENV: str(tmp_path / "t")}) is True
    trace.stamp("w.read", "ab:1", 123)
    trace.span("a.sign", 2, 100)
    gc.collect(0)
    trace.stop()
    (path,) = (tmp_path / "t").iterdir()
    assert path.name.startswith("agent-")
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert rows[0] == ["w.read", "ab:1", "123"]
    assert rows[1] == ["a.sign+", "2", "100"]
    assert rows[2][0] == "a.sign-" and int(rows[2][2]) >= 100
    assert [r[0] for r in rows[3:5]] == ["gc0", "gc-"]


def _write(directory: Path, slow_at: int) -> list[tuple[int, int]]:
    """200 requests 10 ms apart, 1,100 µs each (100 µs a hop, the forward pass 300 µs); one
    of them, `slow_at`, waits 5 ms more on the link down, while the agent signs receipts."""
    coordinator, agent, requests = [], [], []
    for i in range(200):
        t0 = 10_000_000 + i * 10_000_000
        extra = 5_000_000 if i == slow_at else 0
        key = f"ab:{i + 1}"
        at = [t0 + 100_000 * k for k in range(3)] + [t0 + 300_000 + extra + 100_000 * k for k in range(2)]
        at += [t0 + 700_000 + extra + 100_000 * k for k in range(5)]
        sent, c_in, c_down, w_read, w_run, w_ran, c_up, c_woken, c_out, got = at
        coordinator += [f"c.in\t{i}\t{c_in}", f"c.down\t{key}\t{c_down}", f"c.up\t{key}\t{c_up}"]
        coordinator += [f"c.woken\t{key}\t{c_woken}", f"c.out\t{i}\t{c_out}"]
        agent += [f"w.read\t{key}\t{w_read}", f"w.run\t{key}\t{w_run}", f"w.ran\t{key}\t{w_ran}"]
        requests.append((sent, got))
    slow = requests[slow_at][0]
    agent += [f"a.sign+\t3\t{slow + 300_000}", f"a.sign-\t3\t{slow + 1_900_000}"]
    (directory / "coordinator-1.tsv").write_text("\n".join(coordinator) + "\n")
    (directory / "agent-2.tsv").write_text("\n".join(agent) + "\n")
    return requests


def test_the_slowest_requests_hops_and_what_overlapped_them(tmp_path: Path) -> None:
    requests = _write(tmp_path, slow_at=57)
    got = analyse(tmp_path, requests)
    assert got["traced"] == 200 and got["slowest"] == 2
    assert list(got["hops_us"]) == list(HOPS)
    assert got["hops_us"]["link down"] == {"median": 100.0, "slowest_median": 2600.0}
    assert got["hops_us"]["forward"]["median"] == 300.0
    assert got["furthest_past_median"]["link down"] == 1
    assert got["overlapped"]["a.sign"] == {"all": 0.005, "slowest": 0.5}
    assert got["total_us"] == {"median": 1100.0, "slowest_from": 1100.0}
