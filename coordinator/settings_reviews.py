"""The coordinator's settings on reviews of contested claims (ReviewSettings): when the referee's
run of a task two nodes claimed it cannot run is undecided, and how many more nodes' claims then
confirm them. Part of coordinator.settings' SETTINGS.

Each is bounded: below the low end a review or a quorum means nothing (a budget under a node's
own time limit, no timeout forgiven, no further node asked); above the high end one contested
task could hold the referee, or wait for nodes a grid may never have, far past any use."""

from __future__ import annotations

import argparse

from coordinator.config import ReviewSettings
from tensorgrid.config import Setting
from tensorgrid.errors import TensorGridError

ENV_PREFIX = "TENSORGRID_COORDINATOR_"
BUDGET_FACTOR_BOUNDS = (1.0, 100.0)
STALLS_BOUNDS = (1, 10)
QUORUM_BOUNDS = (1, 10)
REVIEW_BUDGET_FACTOR = Setting(
    "--review-budget-factor",
    ENV_PREFIX + "REVIEW_BUDGET_FACTOR",
    ReviewSettings.budget_factor,
    type=float,
    help="referee time a review of two nodes' claims that a task cannot run may take, in multiples of the "
    "task's time limit (at least one --referee-time-s request); past it the review is undecided (1 to 100)",
    metavar="FACTOR",
)
REVIEW_STALLS = Setting(
    "--review-stalls",
    ENV_PREFIX + "REVIEW_STALLS",
    ReviewSettings.stalls,
    type=int,
    help="a review is undecided when its smallest part (one batch, one inner step) times out this many "
    "times in a row (1 to 10)",
    metavar="N",
)
UNDECIDED_QUORUM = Setting(
    "--undecided-quorum",
    ENV_PREFIX + "UNDECIDED_QUORUM",
    ReviewSettings.quorum,
    type=int,
    help="after an undecided review, claims by this many further distinct nodes confirm the task's claims "
    "(a result from a node that never claimed disproves them) (1 to 10)",
    metavar="N",
)
REVIEW_SETTINGS = (REVIEW_BUDGET_FACTOR, REVIEW_STALLS, UNDECIDED_QUORUM)


def review_settings(ns: argparse.Namespace) -> ReviewSettings:
    """ReviewSettings from the parsed flags; TensorGridError naming the flag when one is out of bounds."""
    for setting, value, (low, high) in (
        (REVIEW_BUDGET_FACTOR, ns.review_budget_factor, BUDGET_FACTOR_BOUNDS),
        (REVIEW_STALLS, ns.review_stalls, STALLS_BOUNDS),
        (UNDECIDED_QUORUM, ns.undecided_quorum, QUORUM_BOUNDS),
    ):
        if not low <= value <= high:  # NaN too
            raise TensorGridError(f"{setting.flag} must lie between {low:g} and {high:g}, got {value}")
    return ReviewSettings(budget_factor=ns.review_budget_factor, stalls=ns.review_stalls, quorum=ns.undecided_quorum)
