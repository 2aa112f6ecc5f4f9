"""Where a grid job's time went, for the benchmarks: the nodes' per-task timing lines (fetch,
program load, compute, run, submit, the worker's CPU; node.slot logs them), each task classed as
a shard or a check from the coordinator's database, the referee's and intake's timing lines, each
shard's lease and receipt times (which node ran it, and when), and the CPU seconds the grid's
processes spent (GridCpu)."""

from __future__ import annotations

import re
import resource
import time
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, select

from coordinator.db import schema as s
from tensorgrid.localgrid import LocalGrid

TIMING = re.compile(
    r"task (?P<id>[0-9a-f]{12})/\d+ timing: fetch (?P<fetch>[\d.]+)s, load (?P<load>[\d.]+)s, "
    r"compute (?P<compute>[\d.]+)s, run (?P<run>[\d.]+)s, submit (?P<submit>[\d.]+)s(?:, cpu (?P<cpu>[\d.]+)s)?"
)
RULING = re.compile(r"ruled on check [0-9a-f]+ in (?P<s>[\d.]+)s \((?P<rows>\d+) rows(?:, (?P<how>[a-z-]+))?")
REGISTERED = re.compile(r"registered with \S+ as (?P<address>0x[0-9a-fA-F]{40})")
# a check's confirmation re-run ahead, or a leased shard's check re-run before its result
AHEAD = re.compile(r"ran check (?:of task )?[0-9a-f]+ ahead in (?P<s>[\d.]+)s \((?P<rows>\d+) rows")
PROBE = re.compile(r"row-independence probe of [0-9a-f]+ took (?P<s>[\d.]+)s")


def start_gate(out: Path, go: Path | None) -> str:
    """Code for a timed child interpreter (which has imported `time`): write `out`.ready once
    imported, then wait until `go` exists, so several children start their timed work together.
    Empty without `go`."""
    if go is None:
        return ""
    return (
        f"import os\nopen({str(out) + '.ready'!r}, 'w').close()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
    )


def job_records(db: Path, job_id: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Task id prefix (as the nodes log it) → "shard" or "check"; and what the database says
    about the job: its checks, its tail (from the last shard's result to the job's end), and
    each shard's node and its lease and receipt times in seconds from the job's creation."""
    t, r, j = s.tasks, s.receipts, s.jobs
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.task_id, t.c.kind, t.c.rows).where(t.c.job_id == job_id)).all()
        shards = conn.execute(
            select(t.c.idx, t.c.node, t.c.leased_ms, r.c.received_ms)
            .join(r, (t.c.task_id == r.c.task_id) & (t.c.attempt == r.c.attempt))
            .where(t.c.job_id == job_id, t.c.kind != s.CHECK_KIND)
            .order_by(t.c.idx)
        ).all()
        created, ended = conn.execute(select(j.c.created_ms, j.c.updated_ms).where(j.c.job_id == job_id)).one()
        alone = conn.execute(
            select(s.referee_rulings.c.check_id).where(
                s.referee_rulings.c.job_id == job_id, s.referee_rulings.c.rows_limit == 0
            )
        ).all()
        c = s.checks.c
        unchecked = conn.execute(  # settled with no node's answer: an untrusted subject's, the referee's alone
            select(c.check_id).where(c.job_id == job_id, c.checker.is_(None), c.check_id == c.root_id)
        ).all()
    engine.dispose()
    kinds = {x.task_id[:12]: ("check" if x.kind == s.CHECK_KIND else "shard") for x in rows}
    facts = {
        "check_rows": sum(x.rows for x in rows if x.kind == s.CHECK_KIND),
        "checks_left_to_referee": len(alone),  # no node took them (or a dispute): the referee ran them whole
        "checks_no_node_ran": len(unchecked),  # the referee's alone (untrusted subjects) or left to it
        # from the job's creation (after intake's probe) to its first lease
        "first_lease_s": min((_since(x.leased_ms, created) for x in shards), default=None),
        "tail_s": round((ended - max(x.received_ms for x in shards)) / 1000, 2) if shards else None,
        # per shard: [index, node (breakdown names it), leased at, result in at] (s from the job's creation)
        "shards": [[x.idx, x.node[:10], _since(x.leased_ms, created), _since(x.received_ms, created)] for x in shards],
    }
    return kinds, facts


def _since(ms: int, start_ms: int) -> float:
    return round((ms - start_ms) / 1000, 2)


def breakdown(grid: LocalGrid, job_id: str, wall_s: float, nodes: list[str]) -> dict[str, Any]:
    """Per node: shards and checks run, seconds fetching, loading programs, computing (shards,
    checks), running (the worker's whole turn), submitting, and idle within `wall_s`, and the
    workers' CPU seconds (shards, checks; program loads left out); then the job's facts
    (job_records) and the coordinator's referee (rulings, how many by scoring alone, their wall
    seconds and rows) and intake-probe seconds."""
    kinds, facts = job_records(grid.root / "coordinator" / "coordinator.db", job_id)
    per_node: dict[str, dict[str, float]] = {}
    names: dict[str, str] = {}
    for name in nodes:
        text = (grid.root / f"{name}.log").read_text(errors="replace")
        names.update((m["address"].lower()[:10], name) for m in REGISTERED.finditer(text))
        keys = ("fetch_s", "load_s", "compute_s", "check_compute_s", "cpu_s", "check_cpu_s", "run_s", "submit_s")
        acc = {k: 0.0 for k in (*keys, "busy_s")}
        acc.update(shards=0, checks=0)
        for m in TIMING.finditer(text):
            kind = kinds.get(m["id"])
            if kind is None:
                continue  # another job's
            acc["fetch_s"] += float(m["fetch"])
            acc["load_s"] += float(m["load"])
            acc["run_s"] += float(m["run"])
            acc["submit_s"] += float(m["submit"])
            acc["check_compute_s" if kind == "check" else "compute_s"] += float(m["compute"])
            acc["check_cpu_s" if kind == "check" else "cpu_s"] += float(m["cpu"] or 0.0)
            acc["busy_s"] += float(m["fetch"]) + float(m["run"])
            acc["checks" if kind == "check" else "shards"] += 1
        acc["idle_s"] = max(0.0, wall_s - acc["busy_s"])
        per_node[name] = {k: round(v, 2) for k, v in acc.items()}
    for shard in facts["shards"]:
        shard[1] = names.get(shard[1].lower(), shard[1])
    log = (grid.root / "coordinator.log").read_text(errors="replace")
    rulings = [(float(m["s"]), int(m["rows"]), m["how"] or "") for m in RULING.finditer(log)]
    probes = [float(m["s"]) for m in PROBE.finditer(log)]
    # the referee's re-runs made while their checks ran (a ruling then only compares rows)
    ahead = [float(m["s"]) for m in AHEAD.finditer(log)]
    return {
        "nodes": per_node,
        **facts,
        "referee_rulings": len(rulings),
        "referee_scored": sum(how == "scored" for _, _, how in rulings),  # confirmed without a re-run
        "referee_ahead": sum(how == "ahead" for _, _, how in rulings),  # re-run before the ruling was asked for
        "referee_s": round(sum(t for t, _, _ in rulings) + sum(ahead), 2),
        "referee_rows": sum(r for _, r, _ in rulings),
        "intake_probe_s": round(sum(probes), 2),
    }


class GridCpu:
    """CPU seconds the grid's processes spent between start() and seconds(), by role: the
    coordinator, its sandboxed children (the referee: rulings, and intake's probe of inference
    programs), the node daemons, their task workers, and this process (the client). Counts the
    processes' own time and their reaped children's."""

    def __init__(self, grid: LocalGrid) -> None:
        self.roots = [(p.popen.pid, "coordinator" if p.name.startswith("coordinator") else "node") for p in grid.procs]
        self._before: dict[int, float] = {}
        self._client = 0.0

    def _read(self) -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        for pid, role in self.roots:
            try:
                root = psutil.Process(pid)
                below = "workers" if role == "node" else "referee"
                family = [(root, role), *((c, below) for c in root.children(True))]
            except psutil.Error:
                continue
            for proc, what in family:
                try:
                    t = proc.cpu_times()
                except psutil.Error:
                    continue
                out[proc.pid] = (what, t.user + t.system + t.children_user + t.children_system)
        return out

    @staticmethod
    def _self() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def settle(self, role: str = "referee", timeout_s: float = 60.0) -> None:
        """Wait until `role`'s processes are idle (under 0.02 CPU-seconds in a second): the
        coordinator's sandboxed child imports torch at start, which is not the job's work."""
        deadline = time.monotonic() + timeout_s
        last = self._role(role)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self._role(role)
            if now - last < 0.02:
                return
            last = now

    def _role(self, role: str) -> float:
        return sum(cpu for what, cpu in self._read().values() if what == role)

    def start(self) -> None:
        self._before = {pid: cpu for pid, (_, cpu) in self._read().items()}
        self._client = self._self()

    def seconds(self) -> dict[str, float]:
        spent = {"coordinator": 0.0, "referee": 0.0, "node": 0.0, "workers": 0.0, "client": self._self() - self._client}
        for pid, (role, cpu) in self._read().items():
            spent[role] += cpu - self._before.get(pid, 0.0)
        return {role: round(x, 2) for role, x in spent.items()}


RULED = re.compile(r"ruled on check (?P<id>[0-9a-f]+) in (?P<s>[\d.]+)s")


def timeline(grid: LocalGrid, job_id: str, start_ms: int, nodes: list[str]) -> dict[str, Any]:
    """The job's milestones in seconds from the submit call (`start_ms`, wall clock): the job's
    creation (upload, planning and intake's probe done), per node its first lease, its program
    loaded (the lease, then its first task's fetch and load), and each of its shards' results in;
    per check its subject's result in, when its ruling began and how long it took (the referee's
    queue and its run); the last result, and the job's end. From the coordinator's database (ms)
    and the nodes' and referee's timing lines."""
    t, r, j, c = s.tasks, s.receipts, s.jobs, s.checks
    engine = create_engine(f"sqlite:///{grid.root / 'coordinator' / 'coordinator.db'}")
    with engine.connect() as conn:
        created, ended = conn.execute(select(j.c.created_ms, j.c.updated_ms).where(j.c.job_id == job_id)).one()
        shards = conn.execute(
            select(t.c.task_id, t.c.idx, t.c.node, t.c.leased_ms, r.c.received_ms)
            .join(r, (t.c.task_id == r.c.task_id) & (t.c.attempt == r.c.attempt))
            .where(t.c.job_id == job_id, t.c.kind != s.CHECK_KIND)
            .order_by(r.c.received_ms)
        ).all()
        checks = conn.execute(select(c.c.check_id, c.c.subject_task).where(c.c.job_id == job_id)).all()
        ruled = {  # a ruling's event carries the time its ruling began
            (e.task_index, e.kind): e.time_ms
            for e in conn.execute(
                select(s.events.c.task_index, s.events.c.kind, s.events.c.time_ms).where(s.events.c.job_id == job_id)
            )
        }
    engine.dispose()

    def at(ms: int | None) -> float | None:
        return None if ms is None else round((ms - start_ms) / 1000, 2)

    timings: dict[str, tuple[float, float]] = {}  # task id prefix → (fetch, load)
    names: dict[str, str] = {}
    for name in nodes:
        text = (grid.root / f"{name}.log").read_text(errors="replace")
        names.update((m["address"].lower()[:10], name) for m in REGISTERED.finditer(text))
        timings.update((m["id"], (float(m["fetch"]), float(m["load"]))) for m in TIMING.finditer(text))
    per_node: dict[str, dict[str, Any]] = {}
    for x in shards:
        node = per_node.setdefault(names.get(str(x.node).lower()[:10], str(x.node)[:10]), {"results": []})
        if "first_lease" not in node:
            fetch, load = timings.get(x.task_id[:12], (0.0, 0.0))
            node["first_lease"] = at(x.leased_ms)
            node["loaded"] = round((x.leased_ms - start_ms) / 1000 + fetch + load, 2)
        node["results"].append([x.idx, at(x.received_ms)])
    took = {m["id"]: float(m["s"]) for m in RULED.finditer((grid.root / "coordinator.log").read_text(errors="replace"))}
    by_task = {x.task_id: x for x in shards}
    rulings = []
    for chk in checks:
        subject = by_task.get(chk.subject_task)
        if subject is None:
            continue
        began = ruled.get((subject.idx, "verified"), ruled.get((subject.idx, "caught")))
        rulings.append([subject.idx, at(subject.received_ms), at(began), took.get(chk.check_id[:12])])
    rulings.sort(key=lambda x: x[1] or 0.0)
    return {
        "job_created": at(created),
        "nodes": per_node,
        "last_result": at(max((x.received_ms for x in shards), default=None)),
        "rulings": rulings,  # [shard, its result in, ruling began, ruling took (s)]
        "job_done": at(ended),
    }
