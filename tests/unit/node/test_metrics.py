"""node.metrics: what the node counts, what it reads at a scrape, and how its earnings are polled."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.agent import _counting
from node.main import parse_args
from node.metrics import EARNINGS_MIN_S, NodeMetrics, outcome_of
from tensorgrid.types import ErrorKind
from tensorgrid.v1 import serving_pb2

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(metrics: NodeMetrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_outcomes_name_what_happened_to_a_task() -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(ErrorKind.TIMEOUT) == "timeout"
    for refused in (ErrorKind.INVALID_INPUT, ErrorKind.UNSAFE_INPUT, ErrorKind.BLOB_UNAVAILABLE, ErrorKind.RELEASED):
        assert outcome_of(refused) == "refused"
    for failed in (ErrorKind.OUT_OF_MEMORY, ErrorKind.EXECUTION, ErrorKind.CRASHED):
        assert outcome_of(failed) == "failed"


def test_counts_tasks_results_bytes_and_served_requests() -> None:
    m = NodeMetrics()
    m.task("inference", None, 0.2)
    m.task("inference", None, 0.4)
    m.task("training", ErrorKind.TIMEOUT, 9.0)
    m.task("inference", ErrorKind.UNSAFE_INPUT, 0.0)
    m.result("accepted")
    m.result("rejected")
    m.downloaded(1000)
    m.downloaded(24)
    m.uploaded(512)
    m.audits.inc()
    send: list[Any] = []
    counted = _counting(send.append, m)
    ok = serving_pb2.ServeReply(request_id=1, output=b"x", done=True)
    bad = serving_pb2.ServeReply(request_id=2, done=True)
    bad.error.message = "bad input"
    partial = serving_pb2.ServeReply(request_id=3, tokens=[1, 2])  # generation, not done yet
    counted(serving_pb2.ServeUp(replies=[ok, bad, partial]))
    assert len(send) == 1  # passed on unchanged
    s = _samples(m)
    assert s[("tensorgrid_node_tasks_total", (("kind", "inference"), ("outcome", "ok")))] == 2
    assert s[("tensorgrid_node_tasks_total", (("kind", "training"), ("outcome", "timeout")))] == 1
    assert s[("tensorgrid_node_tasks_total", (("kind", "inference"), ("outcome", "refused")))] == 1
    assert s[("tensorgrid_node_task_seconds_count", (("kind", "inference"),))] == 2
    assert s[("tensorgrid_node_task_seconds_sum", (("kind", "inference"),))] == pytest.approx(0.6)
    assert s[("tensorgrid_node_results_total", (("answer", "accepted"),))] == 1
    assert s[("tensorgrid_node_blob_bytes_total", (("direction", "downloaded"),))] == 1024
    assert s[("tensorgrid_node_blob_bytes_total", (("direction", "uploaded"),))] == 512
    assert s[("tensorgrid_node_audit_reveals_total", ())] == 1
    assert s[("tensorgrid_node_serve_requests_total", (("outcome", "answered"),))] == 1
    assert s[("tensorgrid_node_serve_requests_total", (("outcome", "failed"),))] == 1
    assert ("tensorgrid_node_earned_wei", ()) not in s  # never asked: no figure rather than a false 0


def test_the_machine_is_read_at_each_scrape_and_a_cpu_node_never_loads_torch() -> None:
    code = (
        "import sys; from node.metrics import NodeMetrics; from prometheus_client import generate_latest\n"
        "m = NodeMetrics(); m.watch_machine('cpu'); sum(range(10**6)); text = generate_latest(m.registry).decode()\n"
        "assert 'torch' not in sys.modules, 'torch loaded'\n"
        "print(text)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    s = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for family in text_string_to_metric_families(done.stdout)
        for x in family.samples
    }
    assert s[("tensorgrid_node_resident_memory_bytes", ())] > 10 << 20
    assert s[("tensorgrid_node_process_cpu_seconds_total", ())] > 0
    assert 0 <= s[("tensorgrid_node_machine_cpu_percent", ())] <= 100
    assert not any(name.startswith("tensorgrid_node_gpu") for name, _ in s)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_earnings_are_polled_at_most_every_ten_seconds_and_failures_are_counted() -> None:
    m = NodeMetrics()
    clock = _Clock()
    m.earnings._clock = clock
    answers: list[Any] = [
        SimpleNamespace(cumulative_wei=7 * 10**15 + 3, pending_wei=5),
        RuntimeError("coordinator away"),
        SimpleNamespace(cumulative_wei=8 * 10**15, pending_wei=0),
    ]
    asked = 0

    def fetch() -> Any:
        nonlocal asked
        answer = answers[asked]
        asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    m.earnings._fetch = fetch  # what start() sets, without its thread
    s = _samples(m)
    assert (
        asked == 1 and s[("tensorgrid_node_earned_wei", ())] == 7 * 10**15 + 3
    )  # exact below 2**53 wei (Prometheus values are float64)
    assert s[("tensorgrid_node_unposted_wei", ())] == 5
    _samples(m)
    clock.now += EARNINGS_MIN_S - 1
    _samples(m)
    assert asked == 1  # two more scrapes within ten seconds: no call
    clock.now += 2
    s = _samples(m)
    assert asked == 2 and s[("tensorgrid_node_earnings_poll_failures_total", ())] == 1
    assert s[("tensorgrid_node_earned_wei", ())] == 7 * 10**15 + 3  # the last value stays
    m.earnings.poll(force=True)  # the timer's poll does not wait
    assert asked == 3 and m.earnings.wei == 8 * 10**15


def test_metrics_listen_is_a_run_setting_flag_over_env_over_file(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('metrics_listen = "127.0.0.1:9300"\n')
    base = ["--keystore", str(tmp_path / "k.json"), "--config", str(toml), "run", "--coordinator", "x:1"]
    assert parse_args(base, env={}).metrics_listen == "127.0.0.1:9300"
    env = {"TENSORGRID_NODE_METRICS_LISTEN": "127.0.0.1:9301"}
    assert parse_args(base, env=env).metrics_listen == "127.0.0.1:9301"
    assert parse_args([*base, "--metrics-listen", "127.0.0.1:9302"], env=env).metrics_listen == "127.0.0.1:9302"
    toml.write_text("")
    assert parse_args(base, env={}).metrics_listen == ""  # off by default
    helped = subprocess.run(
        [sys.executable, "-m", "node.main", "run", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert "--metrics-listen" in helped.stdout and "TENSORGRID_NODE_METRICS_LISTEN" in helped.stdout


def test_serves_over_http_and_stops() -> None:
    m = NodeMetrics()
    m.task("noop", None, 0.01)
    port = m.serve("127.0.0.1:0")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'tensorgrid_node_tasks_total{kind="noop",outcome="ok"} 1.0' in text
    finally:
        m.stop()
