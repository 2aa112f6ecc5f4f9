"""Claims from a run on another device class than the referee's (a CUDA node's), and what the
referee's CPU run can prove of them (repositories.claims says how claims count).

The referee runs every review on CPU (REFEREE_DEVICE). What it proves depends on what a claim
says and where the claimant ran:
- an invalid or unsafe input (the files, the settings) reads the same on every device: its clean
  run disproves such a claim from any device class, its failed run confirms it;
- the submitter's program raised (PROGRAM_ERROR) or ran past the task's time limit (TIMEOUT): a
  failed run confirms it from any device class (the program fails, or is too slow for the
  limit, on the grid's reference device too, which the job accepts: any CPU node would meet that),
  but a clean run disproves it only from a run on CPU. A program can raise on one device class alone (an
  operator CUDA implements differently or not at all, a dtype or index check only CUDA makes,
  a submitter's program written to fail there), and its speed on a GPU against the reference CPU
  is the submitter's choice too (thousands of tiny kernels, each a launch and often a sync, the
  CUDA context and the weights' copy counted in the node's wall time): a clean CPU run says
  nothing of what the CUDA node met. So for a CUDA claimant a clean run is undecided
  (OTHER_DEVICE): it keeps the one refusal its claim already holds, nothing more, and other
  nodes settle the task through the undecided path (never leased to a claimant again, a
  non-claimant's verified result finishes it, QUORUM further distinct claims the clean run cannot
  disprove confirm them, unpaid).
- its memory (OUT_OF_MEMORY): what a CUDA node met (its worker's host RSS with the CUDA runtime in
  it, a device full at its slot's share: limit_claims, "Over its memory limit, from a CUDA run") is
  no quantity a CPU referee measures, so a clean or in-between measured run disproves nothing of it
  (OTHER_DEVICE, or undecided for all); but on a job that runs anywhere the limit is the reference
  CPU's, so a measured run past 1.25× it confirms it as a CPU run's (the program is over its limit
  by the job's own definition, whatever the claimant met). On a job that asks for CUDA (a GPU-sized
  limit) the report stays the node's own failure (limit_claims.over_limit).

A job that asks for CUDA (device "cuda") never promised to run on CPU: inference intake admits a
CUDA program its CPU probe could not run (kinds.inference.vetting), other kinds' intake runs a part
of a task only, and its time limit is sized for a GPU (intake's too_slow skips it). So on its tasks
the referee's raise proves nothing either (an operator with no CPU kernel, a CUDA-only graph):
undecided, not final, nobody paid (repositories.reviews); without that, two colluders could fail
such a job and be paid, as invalid-input claims could before. And a timeout there stays the node's
own failure (limit_claims.over_limit), as every CUDA timeout was before.

Why the time limit can be judged for CUDA runs of other tasks: an "any" task's task_time_limit_s is
the grid's reference CPU's, the referee's (CPU nodes run it too, and intake holds it to that CPU:
kinds.inference.vetting.too_slow), and a CUDA node is told the same limit, applied the same way (the
lease's time_limit_ms, the node's wall time from the task's start in its worker, less what the
lease waited ahead, whose timeout is the node's own: node/slot.py, node/executor.py). A referee
run at least 1.25× over it proves the program over its limit by the limit's own definition,
whatever device the claimant ran: confirming it is fair, and pays the claimant what the limit's
time reaches at the referee's pace. Disproving is not: a clean CPU run within half the limit says
the program is fast on CPU, not that a GPU runs it within the limit (above), so that verdict, and
the in-between one, is undecided for a CUDA claimant.

Which device class a claim is from: the task's own device ("cpu" or "cuda"), else ("any") its
claimant's as registered, read when the claim is judged: at the verdict, or at the claim when the
task's review is past (a node runs an "any" task on its
own device: node/slot.py). A node's device_kind is its own word at registration (the coordinator
checks only that it is "cpu" or "cuda"), so a liar can always declare CUDA; re-registering between
its claim and the verdict gains it nothing more than declaring CUDA from the start (it already
holds its refusal; a CPU claimant turned CUDA is undecided rather than disproved, which is what a
CUDA liar gets).

Who could abuse it. A node declaring CUDA and lying that a good program raised (or timed out): its
claim is unconfirmed (a refusal) until a second claim sends the task to review; the referee's clean
run leaves it undecided, so the lie costs the task one review (once per task, as every review) and
up to QUORUM more nodes' runs, is never paid (only a failed referee run pays, ledger.claim_pay),
and fails nothing alone (on a CUDA job not even where the referee's CPU cannot run the program:
above): two colluding CUDA liars need QUORUM more identities, each leased the task
before any honest node takes it, to confirm (2 + QUORUM identities, as a task the referee cannot
finish always needed). Before, a CUDA liar's program error was its own execution error and so
could fail a job only through the task's attempts, each its own failure: the new lever is that
2 + QUORUM colluders declaring CUDA can fail a reviewed job whose program runs cleanly, where CPU
colluders never can (the clean run disproves them). A submitter whose program raises only on CUDA
(or is slow only there): the referee's run is clean, the claims undecided, other nodes (CPU ones
run it cleanly) finish the task; nobody is blamed beyond the refusal each claimant already holds,
and nobody is paid: the run proves nothing the submitter owes. A submitter whose program raises
late on every device: the referee's run raises too, the job fails at the verdict, and every
claimant, CPU or CUDA, is paid by its draw (ledger.claim_pay); on a job that asks for CUDA, it is
undecided instead, and QUORUM more claims confirm them, spending the task's attempts, unpaid (what
is left: a CUDA referee could pay them).
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from coordinator.db import schema as s
from tensorgrid.types import ErrorKind

REFEREE_DEVICE = "cpu"  # the device class the referee runs tasks on (services/sandbox_child.py)
# what a claim may say that a run on one device class can meet and the referee's clean run on its
# own cannot disprove (the program raised, ran past its time limit, held more than its memory limit)
DEVICE_BOUND = (ErrorKind.PROGRAM_ERROR.value, ErrorKind.TIMEOUT.value, ErrorKind.OUT_OF_MEMORY.value)


def device_of(conn: Connection, task_device: str, node: str) -> str:
    """The device class `node` runs a task of `task_device` on: the task's own ("cpu", "cuda"),
    else ("any") the node's as registered."""
    if task_device in ("cpu", "cuda"):
        return task_device
    return str(conn.execute(select(s.nodes.c.device_kind).where(s.nodes.c.address == node)).scalar())


def task_device(conn: Connection, task_id: str) -> str:
    return str(conn.execute(select(s.tasks.c.device).where(s.tasks.c.task_id == task_id)).scalar())


def unprovable(kind: str, device: str) -> bool:
    """Whether the referee's clean run cannot disprove a claim of `kind` from a run on `device`."""
    return device != REFEREE_DEVICE and kind in DEVICE_BOUND


def standing(conn: Connection, task_id: str) -> list[str]:
    """The claimants of the task whose claims the referee's clean run cannot disprove (above)."""
    c = s.failure_claims.c
    rows = conn.execute(select(c.node, c.kind).where(c.task_id == task_id).order_by(c.node)).all()
    device = task_device(conn, task_id)
    return [str(r.node) for r in rows if unprovable(str(r.kind), device_of(conn, device, str(r.node)))]
