"""node.serving.direct, the worker's side of a data link, over socket pairs: the batches'
digests reach the agent together (one control message for many micro-batches), every one of
them, and without waiting for the link to close when it goes quiet."""

from __future__ import annotations

import io
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from node.serving import direct
from node.serving.frames import read_frame
from tensorgrid.serving import batch_digest
from tensorgrid.serving.datalink import DIRECT_BATCH_BASE, encode_frame
from tensorgrid.v1 import serving_pb2

REPLICA = "ab" * 32
WAIT_S = 30.0  # generous: what is awaited comes, the bound only ends a broken run


class _Served:
    """A loaded program's stand-in: each input's output is the input reversed."""

    def run_batch(self, inputs: list[bytes]) -> list[bytes]:
        return [bytes(reversed(x)) for x in inputs]


@pytest.fixture
def link() -> Iterator[tuple[socket.socket, socket.socket, threading.Thread]]:
    """(the coordinator's end of the link, the agent's end of the control socket, the link's thread)."""
    coordinator, worker = socket.socketpair()
    agent, child = socket.socketpair()
    for s in (coordinator, agent):
        s.settimeout(WAIT_S)
    thread = threading.Thread(
        target=direct.serve_link, args=(_Served(), threading.Lock(), worker, child, 1, 16), daemon=True
    )
    thread.start()
    yield coordinator, agent, thread
    coordinator.close()
    thread.join(WAIT_S)
    agent.close()


def _ask(coordinator: socket.socket, request_id: int) -> serving_pb2.ServeUp:
    """One request down the link and its reply (one micro-batch: nothing else is in flight)."""
    request = serving_pb2.ServeRequest(replica_id=REPLICA, request_id=request_id, input=b"in%d" % request_id)
    coordinator.sendall(encode_frame(serving_pb2.ServeDown(requests=[request]).SerializeToString()))
    got = b""
    while len(got) < 4 or len(got) < 4 + int.from_bytes(got[:4], "big"):
        got += coordinator.recv(1 << 16)
    return serving_pb2.ServeUp.FromString(got[4:])


def _told(agent: socket.socket) -> list[dict[str, object]]:
    """Every digest the agent was sent until the worker closed its control socket."""
    stream = io.BytesIO()
    while chunk := agent.recv(1 << 16):
        stream.write(chunk)
    stream.seek(0)
    told = []
    while (frame := read_frame(stream)) is not None:
        told.append(frame[0])
    return told


def test_a_busy_links_digests_go_to_the_agent_together_and_none_is_lost(
    link: tuple[socket.socket, socket.socket, threading.Thread], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "DIGESTS_EVERY_S", 3600.0, raising=False)  # none is due while the test runs
    coordinator, agent, thread = link
    for rid in range(1, 6):
        up = _ask(coordinator, rid)
        assert [(r.request_id, r.output) for r in up.replies] == [(rid, b"%dni" % rid)]
    # answered, and the agent not woken once: one message per batch woke it with each reply
    assert select.select([agent], [], [], 0)[0] == []
    coordinator.close()  # the link ends: what was answered is told at once
    thread.join(WAIT_S)
    told = _told(agent)
    assert [d["ids"] for d in told] == [[rid] for rid in range(1, 6)]
    assert [d["batch"] for d in told] == [DIRECT_BATCH_BASE + rid for rid in range(1, 6)]
    assert told[2]["in"] == batch_digest([b"in3"]) and told[2]["out"] == batch_digest([b"3ni"])


def test_a_quiet_links_digests_reach_the_agent_while_it_stays_open(
    link: tuple[socket.socket, socket.socket, threading.Thread], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "DIGESTS_EVERY_S", 0.05, raising=False)
    coordinator, agent, thread = link
    _ask(coordinator, 1)
    _ask(coordinator, 2)
    got = b""
    while len(got) < 4 or len(got) < 4 + int.from_bytes(got[:4], "big"):
        got += agent.recv(1 << 16)  # within WAIT_S, the link still open
    assert thread.is_alive()
    frames = io.BytesIO(got)
    ids = []
    while (frame := read_frame(frames)) is not None:
        ids += frame[0]["ids"]
    assert ids[0] == 1
