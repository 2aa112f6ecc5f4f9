"""Whose contested task the referee's next review request goes to (services.verification.reviews).

The referee is one thread shared by every job: its rulings come first, and its review requests
(a contested task's run, one part each) are shared out here. Turns go first to the submitter
whose reviews under way have cost least in all, then to that submitter's review that has cost
least, the oldest first among equals. So a review holds no other up by more than one request,
many reviews share the referee rather than queue behind the longest, and a submitter with many
contested tasks takes no more of the referee from another submitter's one review than an equal
share.

Who could abuse it: a submitter sizing every task of many jobs at the edge of its limits (each
task's claims undecided after a full review budget) used to have one turn per task, so its
hundred reviews left another submitter's one a hundredth of the referee; now a half. A submitter
with Sybil identities takes a share per identity, each funding its own jobs' escrow. Nodes that
claim falsely on one submitter's tasks slow only that submitter's reviews (its share), as the
claims are on its jobs. Shares count the reviews still waiting: a restart, or reviews ending,
forget what was spent, so a submitter is never owed turns for reviews that are over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from coordinator.repositories.reviews import Contested


def fair_turn(tasks: Sequence[Contested], spent: Callable[[str], float]) -> Contested:
    """Of `tasks` (oldest first; at least one), the one whose turn it is, by what each task's review
    has cost so far (`spent`: referee seconds)."""
    cost = {t.task_id: spent(t.task_id) for t in tasks}
    share: dict[str, float] = {}
    for t in tasks:
        share[t.submitter] = share.get(t.submitter, 0.0) + cost[t.task_id]
    return min(tasks, key=lambda t: (share[t.submitter], cost[t.task_id]))
