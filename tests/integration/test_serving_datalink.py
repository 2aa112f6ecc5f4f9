"""The serving data link (--serve-data-listen): requests straight from the coordinator to the
warm worker. End to end with real node daemons (answers, receipts paid, a node killed under
load, TLS keeps to the Serve stream), and the port's abuse cases against a real coordinator
process, with a serving peer (tests/integration/serving_peer.py) holding the replicas so the
test can speak the link itself: no hello, a forged hello, a replayed hello, a second link, an
oversize frame, a reply on another replica's link."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.serving.datalink import ACCEPTED, MAGIC, NONCE_BYTES, encode_frame, hello, open_link
from tensorgrid.v1 import serving_pb2
from tensorgrid.workloads.tensorfile import load_tensors
from tests.integration.conftest import Assets, node_args, wait_for
from tests.integration.serving_peer import ServePeer
from tests.integration.test_serving import _local, _under_load
from tests.integration.test_serving_peer import create_endpoint, infer, ready, rows

pytestmark = pytest.mark.integration
SHARED = pytest.mark.xdist_group("datalink")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _closed(sock: socket.socket, within_s: float) -> bool:
    """Whether the other end closes the connection within `within_s` (bytes sent before are skipped)."""
    sock.settimeout(within_s)
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def _greeting(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    while len(got) < len(MAGIC) + NONCE_BYTES:
        got += sock.recv(len(MAGIC) + NONCE_BYTES - len(got))
    assert got.startswith(MAGIC)
    return sock, got[len(MAGIC) :]


def _read_down(sock: socket.socket) -> serving_pb2.ServeDown:
    sock.settimeout(15)
    stream = sock.makefile("rb")
    n = int.from_bytes(stream.read(4), "big")
    return serving_pb2.ServeDown.FromString(stream.read(n))


def _reply(sock: socket.socket, request_id: int, output: bytes) -> None:
    up = serving_pb2.ServeUp(replies=[serving_pb2.ServeReply(request_id=request_id, output=output, done=True, batch=1)])
    sock.sendall(encode_frame(up.SerializeToString()))


@pytest.fixture(scope="module")
def port_grid(make_module_grid: Callable[..., LocalGrid]) -> Iterator[tuple[LocalGrid, int, Any]]:
    # port 0 and the port the coordinator says it took: a port found free, closed and named to
    # the coordinator could be taken by another process's listener before the coordinator binds it
    grid = make_module_grid("--serve-data-listen", "127.0.0.1:0", "--serve-data-max-frame-mib", "1")
    coordinator = grid.start_coordinator()
    said = wait_for(lambda: re.search(r"serving data port on 127\.0\.0\.1:(\d+)", coordinator.log_tail(100)), 30)
    port = int(said.group(1))
    with grid.client(Signer.generate()) as c:
        yield grid, port, c


@pytest.fixture
def peer_replica(
    port_grid: tuple[LocalGrid, int, Any], digits: Assets
) -> Iterator[Callable[[], tuple[str, serving_pb2.ReplicaAssign]]]:
    """A peer node with room for many replicas; each call: a new endpoint placed on it, and its assignment."""
    grid, _, c = port_grid
    peer = ServePeer(grid.target, max_replicas=16).start()

    def place() -> tuple[str, serving_pb2.ReplicaAssign]:
        endpoint = create_endpoint(c, digits, request_timeout_ms=20_000)
        wait_for(ready(c, endpoint), what="a ready replica")
        (assign,) = [a for a in list(peer.assigns.values()) if a.endpoint_id == endpoint]
        assert assign.data_port and len(assign.data_token) == 32  # the port is offered with a token of its own
        return endpoint, assign

    yield place
    peer.stop()


@SHARED
def test_a_connection_that_sends_no_hello_is_closed(port_grid: tuple[LocalGrid, int, Any]) -> None:
    sock, _ = _greeting(port_grid[1])
    with sock:
        assert _closed(sock, 6.0)  # the hello time is 2 s


@SHARED
def test_a_forged_hello_is_refused(port_grid: tuple[LocalGrid, int, Any], peer_replica: Any) -> None:
    _, assign = peer_replica()
    sock, nonce = _greeting(port_grid[1])
    with sock:
        sock.sendall(hello(b"\x07" * 32, nonce, assign.replica_id))  # the replica's id, a guessed token
        sock.settimeout(5)
        assert sock.recv(1) != ACCEPTED


@SHARED
def test_a_replayed_hello_is_refused_and_a_replica_has_one_link(
    port_grid: tuple[LocalGrid, int, Any], peer_replica: Any
) -> None:
    port = port_grid[1]
    _, assign = peer_replica()
    sock, nonce = _greeting(port)
    recorded = hello(assign.data_token, nonce, assign.replica_id)
    sock.sendall(recorded)
    sock.settimeout(5)
    assert sock.recv(1) == ACCEPTED
    # a second link for the same replica, even with its token: refused
    with pytest.raises(ConnectionError):
        open_link("127.0.0.1", port, assign.replica_id, assign.data_token).close()
    sock.close()
    # a fresh hello is accepted once the coordinator has seen the first link close (a fixed
    # 0.5 s pause for that was a race on a loaded machine): until then it is a second link
    deadline = time.monotonic() + 30
    while True:
        try:
            open_link("127.0.0.1", port, assign.replica_id, assign.data_token).close()
            break
        except ConnectionError:
            assert time.monotonic() < deadline, "the replica's first link was never seen closed"
            time.sleep(0.1)
    coordinator = next(p for p in port_grid[0].procs if p.name == "coordinator")
    unverified = f"a data link hello for replica {assign.replica_id[:12]} did not verify"
    again, _ = _greeting(port)
    with again:  # the recorded hello, on a fresh connection (a fresh nonce)
        again.sendall(recorded)
        again.settimeout(5)
        assert again.recv(1) != ACCEPTED
    # refused as a replay (its MAC is over the old nonce), whether or not a link was open then
    wait_for(lambda: unverified in coordinator.log_tail(200), 10, "the replay's refusal in the log")


@SHARED
def test_an_oversize_frame_closes_the_link(port_grid: tuple[LocalGrid, int, Any], peer_replica: Any) -> None:
    _, assign = peer_replica()
    link = open_link("127.0.0.1", port_grid[1], assign.replica_id, assign.data_token)
    with link:
        link.sendall((2 << 20).to_bytes(4, "big") + b"\0" * 1024)  # announces 2 MiB, past the 1 MiB bound
        assert _closed(link, 5.0)


@SHARED
def test_a_malformed_frame_closes_the_link_and_nothing_else(
    port_grid: tuple[LocalGrid, int, Any], peer_replica: Any
) -> None:
    """Bytes that are no ServeUp (a hostile worker's): the link is closed as for any breach, said
    in one line of the coordinator's log, no traceback, and the port serves the next link."""
    grid = port_grid[0]
    _, assign = peer_replica()
    link = open_link("127.0.0.1", port_grid[1], assign.replica_id, assign.data_token)
    with link:
        link.sendall((16).to_bytes(4, "big") + b"\xff" * 16)
        assert _closed(link, 5.0)
    coordinator = next(p for p in grid.procs if p.name == "coordinator")
    wait_for(lambda: f"the data link of replica {assign.replica_id[:12]}" in coordinator.log_tail(200), 10, "the log")
    assert "Traceback" not in coordinator.log_tail(200)
    _, again = peer_replica()
    with open_link("127.0.0.1", port_grid[1], again.replica_id, again.data_token) as other:
        assert not _closed(other, 0.5)


@SHARED
def test_a_reply_on_another_replicas_link_closes_that_link(
    port_grid: tuple[LocalGrid, int, Any], peer_replica: Any
) -> None:
    _, port, c = port_grid
    endpoint_a, a = peer_replica()
    _, b = peer_replica()
    link_a = open_link("127.0.0.1", port, a.replica_id, a.data_token)
    link_b = open_link("127.0.0.1", port, b.replica_id, b.data_token)
    with link_a, link_b:
        answers: list[Any] = []
        caller = threading.Thread(target=lambda: answers.append(infer(c, endpoint_a, rows(5), 20)))
        caller.start()
        (request,) = _read_down(link_a).requests  # A's request came down A's link, not the Serve stream
        assert request.replica_id == a.replica_id and bytes(request.input) == rows(5)
        _reply(link_b, request.request_id, b"forged on B")  # B's worker answers A's request
        assert _closed(link_b, 5.0)
        _reply(link_a, request.request_id, rows(5))  # A answers its own: the caller gets that one
        caller.join(20)
        assert [bytes(r.output) for r in answers] == [rows(5)]


@SHARED
def test_a_broken_link_sends_its_calls_back_down_the_serve_stream(
    port_grid: tuple[LocalGrid, int, Any], peer_replica: Any
) -> None:
    _, port, c = port_grid
    endpoint, a = peer_replica()
    link = open_link("127.0.0.1", port, a.replica_id, a.data_token)
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(infer(c, endpoint, rows(6), 20)))
    caller.start()
    _read_down(link)
    link.close()  # lost with its request: the call goes down the Serve stream, where the peer answers it
    caller.join(20)
    assert [bytes(r.output) for r in answers] == [rows(6)] and answers[0].attempts == 2


def test_real_nodes_answer_on_their_data_links_and_a_killed_node_costs_callers_nothing(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    grid = make_grid("--serve-data-listen", "127.0.0.1:0")
    grid.start_coordinator()
    for i in range(2):
        grid.start_node(f"node{i}", *node_args(), "--serve-replicas", "1")
    grid.wait_for_nodes(2, timeout=300)
    x = load_tensors(digits.inputs)["pixels"]
    with grid.client(Signer.generate()) as client:
        endpoint = client.endpoints.create(digits.model, min_replicas=2, max_replicas=2, device="cpu", check_rate=0.2)
        client.endpoints.wait_ready(endpoint, 2, timeout_s=180)
        nodes = [p for p in grid.procs if p.name.startswith("node")]
        wait_for(
            lambda: all("requests come down its data link" in p.log_path.read_text(errors="replace") for p in nodes),
            60,
            "both replicas' data links",
        )
        for n in (1, 3, 7):
            out = client.infer(endpoint, {"pixels": x[:n]})
            (name,) = out
            torch.testing.assert_close(out[name], _local(digits.model, x[:n]), rtol=1e-5, atol=1e-5)
        # the batches answered on the links are receipted by the agents and paid
        wait_for(lambda: sum(r.served for r in client.endpoints.get(endpoint).replicas) >= 3, 30, "paid requests")

        node1 = next(p for p in grid.procs if p.name == "node1")
        _under_load(client, endpoint, x, lambda: grid.kill_proc(node1))  # callers see no error


def test_with_tls_the_data_port_stays_closed_and_replicas_use_their_serve_streams(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    port = _free_port()
    grid = make_grid("--serve-data-listen", f"127.0.0.1:{port}", tls=True)
    grid.start_coordinator()
    grid.start_node("node0", *node_args(), "--serve-replicas", "1")
    grid.wait_for_nodes(1, timeout=300)
    with grid.client(Signer.generate()) as client:
        endpoint = client.endpoints.create(digits.model, device="cpu")
        client.endpoints.wait_ready(endpoint, 1, timeout_s=180)
        x = load_tensors(digits.inputs)["pixels"]
        out = client.infer(endpoint, {"pixels": x[:2]})
        (name,) = out
        torch.testing.assert_close(out[name], _local(digits.model, x[:2]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConnectionRefusedError):  # nothing plain text where TLS was asked for
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    coordinator = next(p for p in grid.procs if p.name.startswith("coordinator"))
    assert "--serve-data-listen is ignored" in coordinator.log_path.read_text(errors="replace")
    node = next(p for p in grid.procs if p.name == "node0")
    assert "data link" not in node.log_path.read_text(errors="replace")
