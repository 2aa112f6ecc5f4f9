"""Claims that a task's program exceeds its limits: a node's own report that its run of a task hit
the task's time limit (ErrorKind.TIMEOUT) or its memory limit (ErrorKind.OUT_OF_MEMORY), counted,
reviewed and paid as repositories.claims says of every claim; here, which reports are claims
(over_limit) and what the referee's review of them asks.

Over its time limit. A task's time limit (task_time_limit_s) is for the grid's reference CPU, the
referee's: a node's run that hits it (ErrorKind.TIMEOUT, its own report: never a lease the
coordinator saw expire) is a claim that the submitter's program is too slow for it (LIMIT_ERRORS,
over_limit), for a kind the referee reviews; on a kind it does not review, or an expired lease, it
is the node's own failure, as every timeout was before, and a node daemon reports a run whose limit
it shortened by waiting ahead as its own execution error (node/slot.py). From a CUDA run it is a
claim too, judged as a CPU run's but never disproved, unless its job asks for CUDA (device "cuda":
a GPU-sized limit, which intake does not hold to the reference CPU, kinds.inference.vetting.too_slow;
there it stays the node's own): a CUDA node is told the same limit, applied the same way, and an
"any" task's limit is the reference CPU's (CPU nodes run it too), so the referee taking 1.25× it
confirms (the program is over its limit, whatever ran it), but a fast clean CPU run says nothing
of a GPU's speed on that program, so within 0.5× it is undecided for a CUDA claimant
(repositories.claim_devices, "Why the time limit can be judged for CUDA runs at all"). The
claim is counted, reviewed and paid as a program error's, but the review asks another question:
does the task exceed its limit on the referee? The referee runs it (in parts, as always) and adds
up what its clean parts would take on its CPU with nothing else on it, at least (their child's CPU
time over the threads it may use at once) and at most (that CPU time, and their wall time):
services.verification.reviews._timed and _bounds; ReviewSettings. Not their wall time alone: the
referee runs niced, so load on the coordinator's machine (which a colluder can add with calls of
its own) would stretch a run and confirm claims on a job the reference runs within its limit.
- at least over_limit (1.25) × the limit, the moment its parts pass that, or when one smallest part
  timed out twice and took that long: confirmed, final. The job fails naming the limit
  (a training task ends alone); each claimant wins one reward with probability
  (units the limit's time reaches at the referee's pace ÷ the task's): what its run did.
- a whole run of at most within_limit (0.5) × the limit: disproved; its claimants keep their refusals
  (a CUDA run's claimant: undecided, as next).
- in between: undecided (the edge of the limit, where a slower reference, a node's honest
  jitter or a run that could have been parallel or not decide): other nodes settle it, nobody paid.
Who could abuse it. A slow node (its CPU over twice the reference's time) pays a refusal per
task, as a node failing a task always paid; within twice, it is undecided and blames no one more.
A lying node or two colluders cannot fail a job the reference runs within 1.25× its limit, nor
get paid for one it runs within it; in between they cost the referee one review and the task
QUORUM more nodes, as any undecided claim does; so do liars declaring CUDA on a program the referee
runs well within its limit (claim_devices). A submitter sizing tasks at the edge gets them
run by nodes that can (each claimant keeps a refusal until QUORUM more confirm); past 1.25× its
job fails after two runs and one review and pays for them. A program slow only on some rows is
measured whole (every row a node's run would reach), so it cannot hide. What is left: a part's
overhead in its child (its program loaded) counts in it, and a program that runs on one thread is
credited with the referee's every core in the lower bound (it confirms later, never wrongly); where
its child's CPU time cannot be read (not Linux) the wall time is both bounds; a hostile
program whose first part runs whole costs the referee at most one request (--referee-time-s), as
any review. Intake refuses the grossest cases first (kinds/inference/vetting.too_slow: a lower bound
from its probe).

Over its memory limit. A node's own report from a CPU run (a CUDA run's: below) of an inference,
generation or training task (or of a check task of one) that the program held more than the task's memory limit
(ErrorKind.OUT_OF_MEMORY, MEMORY_ERRORS, over_limit with `measured`: the kinds whose memory the
referee measures), from a node that offers at least that limit (a node offering less met its own
cap, not the task's limit: its own failure), is a claim too, counted, reviewed and paid as a time
claim, the review asking: does the task's run hold more than its limit? What a node compares with
the limit is the peak RSS (VmHWM) of its whole worker process, torch loaded, reset before the task,
polled while it runs and read after (node.executor), behind an address-space backstop at the limit
+ ADDRESS_SPACE_HEADROOM (node.worker); a worker that held other jobs' programs when it met the
limit runs the task once more in a fresh one before its node reports. The referee's warm child is
no measure of that (it holds other jobs' programs, runs parts of rows, and has a cap of its own),
so the review is one run of the whole task (inference: its rows at the job's batch size;
generation: the decoding loop over its prompts; a check task: as its job's tasks run, chosen by
its settings' task kind) in a fresh child of its own, measured the same way and killed the moment it
passes over_limit × the limit (services.verification.memory, tensorgrid.sandbox.measured); a
training task's run from the round's weights is measured in parts, each such a child, of 1, 1, 2,
4, ... inner steps (its memory peaks in its first steps; a part holds at most half a referee
request), the training state carried between them as a review's replay carries it, the peak the
highest over the parts (services.verification.memory_parts):
- a peak over over_limit (1.25) × the limit: confirmed, final, the job fails naming the memory
  limit (a training task ends alone, its round closing without it); each claimant draws for (the
  referee's time until its run held more than the limit, at least, ÷ the task's time limit) of the
  task: what its run did before it met the limit, at most; for training, (the inner steps the
  parts before the one that passed the limit ran ÷ the task's): at least half what it did.
  Out of the referee's own address space: confirmed so only when that cap is at least 1.25× the
  limit (the program grew past what a node's backstop allows for the limit by that margin).
- a whole clean run within within_limit (0.5) × it: disproved; its claimants keep their refusals
  (training: only once every inner step ran, so a program small at first is never cleared early).
- in between, a crash the referee did not cause, its request's time limit, no /proc, a training
  review whose parts spent its budget (--review-budget-factor × the task's time limit) before
  the last step: undecided.
Who could abuse it. A lying node or two colluders cannot fail a job whose fresh run stays within
1.25× its limit (a fresh referee child's baseline and a worker's, ~310 MiB with torch, differ by tens
of MiB: well inside that margin for any limit a worker can meet), nor be paid for one; within
half of it they keep their refusals; between, they cost one review and QUORUM more nodes. A node
whose warm worker held other programs is not blamed for them: it ran the task fresh before it
reported. A submitter sizing at the edge gets its tasks run by nodes that can; past 1.25× its job
fails after two runs and one review and pays for them. A program whose memory depends on its rows
or its batch is measured over every row at the job's batch size, as a node runs it; a train program
whose memory depends on its shard or grows with its steps, over every step of the task's shard, or
undecided (more nodes settle it) when the review budget ends first. A program
allocating to exhaust the referee costs one fresh child, killed at 1.25× the limit (between two
20 ms polls it can reach at most the referee's hard cap, which protects the coordinator as for any
referee run; a MemoryError there is read as over the limit only under the margin above); a training
review, one fresh child per part, at most its review budget. What is left: a training claimant's pay
counts steps by parts (the steps before the part that passed the limit: at least half a node's),
and a training task longer than its review budget is undecided however its first parts went, so a
program that grows late in a long task costs QUORUM more node runs, unpaid. Intake refuses an
inference, generation or training program whose part of a task run there (the probe's rows, the
first prompts' first tokens, the first inner step) already holds more than 1.25× its limit
(kinds.memory, "Memory at intake"), but a program small there and large on a whole task passes it
and is settled here; under the defaults (a task limit of 4 GiB, the referee's cap --referee-memory-mib of
4 GiB) a program that runs out of the referee's cap is undecided, so more nodes settle it: an
operator who wants the referee to settle such claims gives it at least 1.25× the largest limit its
jobs set.

Over its memory limit, from a CUDA run. What a CUDA node compares with the limit is not what the
referee measures: its executor polls the same VmHWM of its worker (node.executor), but that holds
the CUDA runtime's host memory (driver, context, the kernel images torch loads: hundreds of MiB,
by driver and version) and none of the program's device tensors, with no address-space backstop
(node.worker skips it on CUDA); and the program's device allocations fail (torch's OutOfMemoryError,
classified out of memory: node/worker.classify) at the slot's share of the GPU, not the task's
limit (node/spawn.py: cuda_memory_bytes, a per-process fraction of what the slot offers), which the
context's own device memory and other processes may fill first. So an honest CUDA node can fail a
task at a limit a CPU node passes (a 1 GiB limit and a small program: a CPU worker's ~310 MiB, a
CUDA worker's torch plus its runtime), and can pass one a CPU node fails (its activations on the
device): no CPU run can disprove its report, nor confirm it as a measure of its run. What a CPU run
can prove is the program against the limit's own definition, where the limit is the reference
CPU's: a job whose tasks may run on any device (device "any") is held to it on CPU at intake
(kinds.memory.measures_memory), its tasks leased to CPU nodes, whose workers fail it past the
limit. So its CUDA run's report is a claim (over_limit), reviewed by the same measured run:
- past over_limit (1.25) × the limit (or out of a referee cap at least that): confirmed as a CPU
  run's, final, the job fails naming the limit; each claimant, CPU or CUDA, draws for the share a
  run on the reference reached before the limit (a CUDA claimant's own run may have met its limit
  sooner, or never: what it is paid is what a CPU node's run of the program does, which the
  program's failure owes). The verdict rests on the referee's run alone against the CPU nodes'
  measure, with the margin above for their baselines; what the CUDA node measured never enters it.
- clean within within_limit (0.5), or in between: undecided for a CUDA claimant (per claimant,
  claim_devices: a clean run's OTHER_DEVICE), settled by other nodes as any undecided claim.
A job that asks for CUDA (device "cuda") sizes its limit for a GPU, and intake does not hold it to
the CPU (kinds.memory.measures_memory skips it): a CPU run past 1.25× it proves nothing of the job's
limit (CPU allocations differ: oneDNN workspaces, im2col buffers, the activations a GPU holds off
the host), so its report stays the node's own failure, an attempt and a failure, as every CUDA
out-of-memory report was before. Who could abuse it: nodes declaring CUDA (their own word) lying
that a small program ran out of memory: one review per task, no pay, nothing failed alone; 2 +
QUORUM identities confirm, unpaid, as for a program error (claim_devices); before, each lie was
an own failure spending an attempt, so max_attempts lies (one node leased the task again after
its avoid window among them) failed the job. A submitter whose program fits a GPU but not the
reference CPU, on a job that runs anywhere: its job fails at the first review, as CPU claims
would fail it, and pays for the runs. What is left: an honest CUDA node that meets a limit a CPU
node passes (the runtime's host memory on a small limit, a GPU filled by others) is undecided, not
paid, and holds the refusal its claim costs (before: a failure and an attempt); the node's measure
itself (its host RSS counting the CUDA runtime) is unchanged.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from coordinator.db import schema as s
from tensorgrid.types import ErrorKind, TaskError

# a node's report that the program ran past the task's limit: a claim where the referee can judge it
LIMIT_ERRORS = (ErrorKind.TIMEOUT,)
# a node's report that the program held more than the task's memory limit: a claim where the
# referee can measure it ("Over its memory limit")
MEMORY_ERRORS = (ErrorKind.OUT_OF_MEMORY,)


def over_limit(conn: Connection, row: Any, error: TaskError, *, reviewed: bool, measured: bool = False) -> bool:
    """Whether a node's own report (never a lease the coordinator saw expire) that its run of a task
    (a tasks row) hit the task's time limit, or its memory limit, is a claim that the program
    exceeds it (the module's "Over its time limit", "Over its memory limit"): a timeout only for a
    kind the referee reviews, from a run on any device class, of a task whose job does not ask for
    CUDA (then the limit is the reference CPU's: claim_devices); out of memory only for a kind whose
    memory it measures (`measured`), from a node that offers at least the task's limit, of a task
    whose job does not ask for CUDA either, from a run on any device class ("Over its memory limit,
    from a CUDA run"); anything else stays the node's own failure, as every timeout and every
    out-of-memory was before."""
    if not row.node:
        return False
    if error.kind in LIMIT_ERRORS:  # a job asking for CUDA sizes its limit for a GPU (intake: too_slow)
        return reviewed and str(row.device) != "cuda"
    if error.kind not in MEMORY_ERRORS:
        return False
    limit = int(row.memory_limit_bytes or 0)  # a node offering less met its own cap, not the task's limit
    judged = reviewed and measured and limit > 0 and _offered(conn, row.node) >= limit
    return judged and str(row.device) != "cuda"  # a job asking for CUDA sizes its limit for a GPU


def _offered(conn: Connection, node: str) -> int:
    """The memory a node offers (its registered capabilities)."""
    return int(conn.execute(select(s.nodes.c.memory_bytes).where(s.nodes.c.address == node)).scalar() or 0)
