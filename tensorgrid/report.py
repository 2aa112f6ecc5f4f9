"""Human lines about jobs, shared by the command line and the demo."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from tensorgrid.types import JobEvent, JobInfo, JobVerification

_OUTCOME_ORDER = ("verified", "passed", "caught", "failed", "unverified", "expired", "open", "pending", "disputed")


def print_job(job: JobInfo, ended: int = 0) -> None:
    """ended: how many of its tasks failed for good while the job went on (ended_tasks)."""
    print(f"job {job.job_id}\n  state    {job.state.value}\n  kind     {job.kind}\n  tasks    {tasks_line(job, ended)}")
    if job.result:
        print(f"  result   {job.result.sha256} ({job.result.size} bytes)")
    if job.error:
        print(f"  error    {job.error}")
    if job.verification is not None:
        print(f"  {verification_line(job.verification)}")


def tasks_line(job: JobInfo, ended: int = 0) -> str:
    """The tasks line, e.g. "9/10 done, 1 ended without a result (...), 3 failed attempts": a training
    task that failed for good (repositories.tasks.end_task) still counts in tasks_total, so a job that
    succeeded without it would read as one task short of done with nothing to say why."""
    line = f"{job.tasks_done}/{job.tasks_total} done"
    if ended:
        them = "it" if ended == 1 else "them"
        line += f", {ended} ended without a result (failed for good; the job went on without {them})"
    return f"{line}, {job.task_failures} failed attempts"


def ended_tasks(events: Iterable[JobEvent]) -> int:
    """How many of a job's tasks ended without a result while it went on (their `ended` events)."""
    return len({ev.task_index for ev in events if ev.kind == "ended"})


# The events that say why a job is slow or failed, as `job status` lists them. Left out: those
# every job has one of per task or per check (completed, verified, unverified, unverifiable),
# which would bury these in a job of 10,000 tasks, and the milestones the state line and
# progress already say (submitted, running, succeeded, round). `job watch` shows them all.
NOTABLE_EVENTS = frozenset(
    {
        "reissued",  # a task failed on a node (or its lease expired) and goes to another
        "released",  # a draining node gave its lease back
        "contested",  # a second failure claim: the referee runs the task
        "undecided",  # the referee could not decide the claims
        "disproved",  # a non-claimant's result disproved the claims
        "claims_paid",  # what a failed task's claimants were paid
        "ended",  # a training task failed for good: its round closes without it
        "disputed",  # a checker disagrees with a result
        "caught",  # a result (or a check) proven wrong
        "slashed",  # a caught node's stake taken
        "failed",  # the job's failure reason
        "cancelled",
    }
)
_TASK_EVENTS = ("reissued", "released", "contested", "undecided", "disproved", "claims_paid", "ended")  # about one task


def event_note(ev: JobEvent, width: int = 60) -> str:
    """An event as `job watch` shows it beside its bar and `job status` lists it: "task 3
    contested: <why>", "caught: <why>", "failed: <why>"; the message cut to width characters."""
    if ev.kind == "completed":
        return ""
    head = f"task {ev.task_index} {ev.kind}" if ev.kind in _TASK_EVENTS else ev.kind
    if not ev.message:
        return head
    message = ev.message if len(ev.message) <= width else ev.message[: width - 1] + "…"
    return f"{head}: {message}"


def notable_events(events: Iterable[JobEvent], last: int) -> tuple[list[JobEvent], int]:
    """The last `last` notable events (oldest first) and how many earlier notable ones are left out."""
    notable = [ev for ev in events if ev.kind in NOTABLE_EVENTS]
    shown = notable[len(notable) - last :] if last > 0 else []
    return shown, len(notable) - len(shown)


def print_events(job_id: str, shown: list[JobEvent], left_out: int) -> None:
    """`job status`'s events: one line each after the job's report, with a time of day (local)."""
    if not shown and not left_out:
        return
    print("  events")
    if left_out:
        events = f"{left_out} earlier event{'s' if left_out != 1 else ''}"
        print(f"    ({events} left out: `tensorgrid job watch {job_id}` shows all)")
    for ev in shown:
        when = time.strftime("%m-%d %H:%M:%S", time.localtime(ev.time_ms / 1000))
        node = f" [node {ev.node[:10]}…]" if ev.node else ""
        print(f"    {when}  {event_note(ev, 200)}{node}")


def format_eth(wei: int) -> str:
    """Exact: 1200000000000000 wei -> "0.0012 ETH"."""
    whole, frac = divmod(wei, 10**18)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".") + " ETH"


def verification_line(v: JobVerification) -> str:
    """One human line, e.g. "verification: spotcheck, 12 checks (11 verified, 1 caught),
    detection ≥ 99.0%, stake required 0.0012 ETH"; a training job's replays of its results read
    "verification: spotcheck, 5 audits (4 passed, 1 failed)"."""
    if v.mode == "none" and not v.checks and not v.claims_drawn:
        return "verification: none (signature, lease holder and output hash only)"
    outcomes: dict[str, int] = {}
    for key, n in v.checks.items():
        outcome = key.rpartition(":")[2]
        outcomes[outcome] = outcomes.get(outcome, 0) + n
    order = sorted(outcomes, key=lambda o: (_OUTCOME_ORDER.index(o) if o in _OUTCOME_ORDER else 99, o))
    found = ", ".join(f"{outcomes[o]} {o}" for o in order if outcomes[o])
    total = sum(outcomes.values())
    noun = "audit" if v.checks and all(k.startswith("audit:") for k in v.checks) else "check"
    parts = [v.mode, f"{total} {noun}{'s' if total != 1 else ''}" + (f" ({found})" if found else "")]
    if v.detection > 0:
        parts.append(f"detection ≥ {math.floor(v.detection * 1000) / 10:.1f}%")
    if v.required_stake_wei:
        parts.append(f"stake required {format_eth(v.required_stake_wei)}")
    if v.fee_budget_wei:
        checkers = v.fee_paid_wei - v.decoy_paid_wei
        parts.append(f"checkers paid {format_eth(checkers)} of a {format_eth(v.fee_budget_wei)} fee")
    if v.decoys:
        parts.append(
            f"{v.decoys} decoy{'s' if v.decoys != 1 else ''} ({v.decoys_drawn} drawn) "
            f"paid {format_eth(v.decoy_paid_wei)}"
        )
    if v.claims_drawn:
        n = v.claims_drawn
        parts.append(f"{n} proven failure claim{'s' if n != 1 else ''} paid {format_eth(v.claims_paid_wei)}")
    if v.slashes:
        parts.append(f"{v.slashes} slash{'es' if v.slashes != 1 else ''} took {format_eth(v.slashed_wei)}")
    return "verification: " + ", ".join(parts)


def round_line(m: dict[str, Any]) -> str:
    """One line per closed round, as `submit-training --watch` prints it."""
    acc = "" if m.get("accuracy") is None else f"  accuracy {100 * m['accuracy']:5.1f}%"
    loss = "-" if m.get("loss") is None else f"{m['loss']:.4f}"
    return (
        f"round {m['round'] + 1:>3}/{m['rounds']}  held-out loss {loss}{acc}  "
        f"workers {m['workers']}  sent {m['bytes_up'] / 1000:.1f} kB"
    )
