"""Bulk tickets (coordinator.api.bulk.Tickets): one use each, void after their time, a bounded
number open per submitter."""

from __future__ import annotations

import os
import time

import pytest

from coordinator.api.bulk import Tickets
from coordinator.errors import QuotaExceeded


def test_a_ticket_admits_one_transfer() -> None:
    tickets = Tickets(ttl_ms=60_000, per_submitter=4)
    token, ticket = tickets.issue("0xA", upload=True, size=10)
    assert len(token) == 32 and ticket.size == 10 and ticket.upload
    assert tickets.take(token) == ticket
    assert tickets.take(token) is None  # replayed
    assert tickets.take(os.urandom(32)) is None  # made up


def test_a_ticket_is_void_after_its_time() -> None:
    tickets = Tickets(ttl_ms=1, per_submitter=4)
    token, _ = tickets.issue("0xA", upload=False, size=5, sha256="ab" * 32, offset=3)
    time.sleep(0.01)
    assert tickets.take(token) is None


def test_a_submitter_holds_a_bounded_number_of_open_tickets() -> None:
    tickets = Tickets(ttl_ms=60_000, per_submitter=2)
    first, _ = tickets.issue("0xA", upload=True, size=1)
    tickets.issue("0xA", upload=True, size=1)
    with pytest.raises(QuotaExceeded, match="2 bulk tickets are already open"):
        tickets.issue("0xA", upload=True, size=1)
    tickets.issue("0xB", upload=True, size=1)  # another submitter has its own
    assert tickets.take(first) is not None
    tickets.issue("0xA", upload=True, size=1)  # a used ticket frees its place
    expiring = Tickets(ttl_ms=1, per_submitter=1)
    expiring.issue("0xA", upload=True, size=1)
    time.sleep(0.01)
    expiring.issue("0xA", upload=True, size=1)  # an expired one does too
    assert len(expiring) == 1
