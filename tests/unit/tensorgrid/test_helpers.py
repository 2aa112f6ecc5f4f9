"""The small helpers every package shares: backoff and 64-hex checks."""

from __future__ import annotations

import pytest

from tensorgrid.digests import check_hex32, is_hex32
from tensorgrid.errors import SignatureError, TensorGridError
from tensorgrid.retry import backoff


def test_backoff_doubles_from_base_up_to_the_cap() -> None:
    assert [backoff(n, 0.5, cap=3.0) for n in range(-1, 6)] == [0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff(10**9, 1e-300, cap=7.0) == 7.0  # huge failure counts neither overflow nor hang
    assert backoff(3, 0.25) == 1.0  # no cap


def test_backoff_reproduces_each_hand_written_formula_it_replaces() -> None:
    # tensorgrid/client.py watch: sleep min(0.2 * 2**retries, 2.0) after retries += 1
    assert all(backoff(r, 0.4, cap=2.0) == min(0.2 * 2**r, 2.0) for r in range(1, 31))
    # node/agent.py submit and reveal: sleep 0.5 * 2**attempt for attempt 0, 1
    assert all(backoff(a + 1, 0.5) == 0.5 * 2**a for a in range(3))
    # node/agent.py registration: delay 0.2, then min(delay * 2, 5.0)
    delay, delays = 0.2, []
    for _ in range(8):
        delays.append(delay)
        delay = min(delay * 2, 5.0)
    assert [backoff(n, 0.2, cap=5.0) for n in range(1, 9)] == pytest.approx(delays)
    # coordinator/repositories/nodes.py backoff_ms and the outbox retry in coordinator/services/outbox.py
    for n in range(-2, 200):
        node_ms = 0 if n <= 0 else int(min(60_000, 500 * 2 ** min(n - 1, 20)))
        assert int(backoff(n, 500, cap=60_000)) == node_ms
    for attempts in range(1, 200):
        assert int(backoff(attempts, 500, cap=60_000)) == min(60_000, 500 * 2 ** min(attempts - 1, 30))


@pytest.mark.parametrize(
    ("value", "ok"),
    [("ab" * 32, True), ("0" * 64, True), ("AB" * 32, False), ("0x" + "a" * 62, False), ("a" * 63, False),
     ("a" * 65, False), ("g" * 64, False), (b"a" * 64, False), (None, False), ("a" * 64 + "\n", False)],
)  # fmt: skip
def test_hex32(value: object, ok: bool) -> None:
    assert is_hex32(value) is ok
    if ok:
        assert check_hex32(value, "x") == value
    else:
        with pytest.raises(TensorGridError, match="x must be exactly 64 lowercase hex digits without 0x"):
            check_hex32(value, "x")


def test_check_hex32_raises_the_callers_error() -> None:
    with pytest.raises(SignatureError, match="receipt job_id must be exactly 64"):
        check_hex32("zz", "receipt job_id", SignatureError)
