"""`tensorgrid-node claim` when there is nothing on chain to claim yet."""

from __future__ import annotations

import pytest

from node import settle
from tensorgrid import exitcodes
from tensorgrid.errors import TensorGridError
from tensorgrid.types import Earnings

NODE = "0x" + "ab" * 20


class NeverClaims:
    """A chain handle on which claiming fails the test: nothing here may be claimed."""

    address = NODE

    def claimed(self, address: str) -> int:
        return 0

    def claim(self, cumulative: int, proof: list[bytes]) -> None:
        pytest.fail("claimed with nothing posted on chain")


def test_a_node_that_earned_nothing_is_told_so_and_exits_ok(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(settle, "earnings_of", lambda coordinator, address, tls: Earnings(NODE, 0, 0))
    assert settle.claim("127.0.0.1:1", NeverClaims()) == exitcodes.OK
    assert "has not been paid for any verified task yet" in capsys.readouterr().out


def test_earnings_not_yet_posted_are_an_error_naming_the_amount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settle, "earnings_of", lambda coordinator, address, tls: Earnings(NODE, 5 * 10**15, 5 * 10**15))
    with pytest.raises(TensorGridError, match=r"earned 0\.005000 ETH .*not posted on chain yet"):
        settle.claim("127.0.0.1:1", NeverClaims())
