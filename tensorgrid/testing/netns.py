"""Hosts for multi-host tests: network namespaces joined by a Linux bridge, on this machine.

`Network(["coordinator", "node1", …])` creates one namespace per host (`tgtest-<pid>-<n>`),
one more holding the bridge, a veth from each host to the bridge, and a veth from the root
namespace to the bridge (the root namespace is a host too: the one where the test runs and
PostgreSQL listens). Addresses come from one /24 of 198.18.0.0/15 (RFC 2544's range for
network tests) that no route of the root namespace touches yet; hosts get .1, .2, … in the
order given and the root namespace .254. Each host's lo is up. `exec_prefix(host)` is what to
put before a command to run it there (`ip netns exec NAME`).

Closing (also after a failure, and on exit if a test forgot) kills what still runs inside the
namespaces, deletes them (which deletes their veths) and the root's veth, every step bounded
in time. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); `unavailable()` says why it cannot run.

Who could abuse it: only a local root user, who could do all this anyway. It changes the root
namespace only by one veth with an address in a test range, removed on close.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

PREFIX = "tgtest"
RANGE = ipaddress.IPv4Network("198.18.0.0/15")
_counter = itertools.count()


def _ip(*args: str, check: bool = True, timeout: float = 10) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    name = f"{PREFIX}-{os.getpid()}-probe"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.SubprocessError, FileNotFoundError) as e:
        return f"`ip netns add` fails here: {e}"
    _ip("netns", "del", name, check=False)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no address or route of the root namespace overlaps, starting
    from one picked by the pid so concurrent test runs rarely even try the same one."""
    used = _ip("-4", "route", "show", "table", "all") + _ip("-4", "-o", "addr", "show")
    taken = set()
    for word in used.split():
        try:
            net = ipaddress.ip_network(word, strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.overlaps(RANGE):
            taken.add(net)
    subnets = list(RANGE.subnets(new_prefix=24))
    start = os.getpid() % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(t) for t in taken):
            return subnet
    raise OSError("no free /24 left in 198.18.0.0/15")


@dataclass
class Network:
    """Namespaces for `hosts`, a bridge joining them and the root namespace; see the module doc."""

    hosts: list[str]
    subnet: ipaddress.IPv4Network | None = None
    namespaces: dict[str, str] = field(default_factory=dict)  # host → namespace name
    addresses: dict[str, str] = field(default_factory=dict)  # host → its 198.18 address
    root_address: str = ""
    _bridge_ns: str = ""
    _root_veth: str = ""
    _closed: bool = False

    def _name(self) -> str:
        return f"{PREFIX}-{os.getpid()}-{next(_counter)}"

    def open(self) -> Network:
        atexit.register(self.close)
        try:
            self.subnet = self.subnet or _free_subnet()
            self._bridge_ns = self._name()
            _ip("netns", "add", self._bridge_ns)
            _ip("-n", self._bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self._bridge_ns, "link", "set", "br0", "up")
            hosts = list(self.subnet.hosts())
            for i, host in enumerate(self.hosts, start=1):
                ns = self._name()
                _ip("netns", "add", ns)
                self.namespaces[host] = ns
                self.addresses[host] = str(hosts[i - 1])
                self._link(ns, f"tg{os.getpid()}b{i}", self.addresses[host])
            self._root_veth = f"tg{os.getpid()}r{next(_counter)}"
            self.root_address = str(hosts[253])
            self._link(None, self._root_veth, self.root_address)
        except BaseException:
            self.close()
            raise
        return self

    def _link(self, ns: str | None, name: str, address: str) -> None:
        """A veth from `ns` (None: the root namespace) to the bridge, with `address` on its end."""
        peer = f"{name}p"
        _ip("link", "add", name, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self._bridge_ns)
        _ip("-n", self._bridge_ns, "link", "set", peer, "master", "br0", "up")
        if ns is None:
            _ip("addr", "add", f"{address}/24", "dev", name)
            _ip("link", "set", name, "up")
            return
        _ip("link", "set", name, "netns", ns)
        _ip("-n", ns, "link", "set", name, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")

    def exec_prefix(self, host: str) -> list[str]:
        """Put before a command line to run it in `host`'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[host]]

    def close(self) -> None:
        """Kill what runs in the namespaces, delete them and the root's veth (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        spaces = [*self.namespaces.values(), *([self._bridge_ns] if self._bridge_ns else [])]
        for ns in spaces:
            _kill_inside(ns)
        for ns in spaces:
            _ip("netns", "del", ns, check=False)
        if self._root_veth:  # gone with its peer in the bridge's namespace; make sure
            _ip("link", "del", self._root_veth, check=False)

    def __enter__(self) -> Network:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_inside(ns: str, timeout: float = 5) -> None:
    """SIGTERM every process in namespace `ns`, SIGKILL what remains after `timeout` s."""
    try:
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).split()]
    except (OSError, subprocess.SubprocessError):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 0.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
