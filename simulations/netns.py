"""Emulated edge links: a server namespace and one namespace per node, joined by shaped veth pairs.

Layout (every address lives inside namespaces made here; nothing is added to the host's own network)::

    server namespace  fls<pid>-srv: lo, bridge flsbr (10.231.0.1/24), one veth end per node (a bridge port)
    node i namespace  fls<pid>-n<i>: lo, the other veth end (10.231.0.<10+i>/24)

Each direction is shaped where its packets leave: the uplink (node → server) by ``tbf`` on the
node's veth end, the downlink (server → node) by ``tbf`` on the server's. A process runs in a
namespace by being started under ``ip netns exec`` (:meth:`ShapedNetwork.exec_prefix`).

``tbf`` shapes bandwidth only: this kernel has no ``netem``, so no delay or loss is added. Round-trip
time enters the link model (:mod:`fl_split.link`) as a parameter.

:class:`ShapedNetwork` is a context manager: on exit (also on an exception, Ctrl-C or SIGTERM) it deletes
the namespaces, which deletes their veths and bridge. Names carry the creating process's pid, and
:func:`remove_stale` deletes those of processes that no longer exist (a run killed with SIGKILL).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from fl_split.link import LinkProfile

SUBNET = "10.231.0"
SERVER_IP = f"{SUBNET}.1"
_PREFIX = "fls"
_NAME = re.compile(rf"^{_PREFIX}(\d+)-(srv|n\d+)$")


#: ``_old_sigterm`` while this network has not replaced the SIGTERM handler
_NOT_TRAPPED = object()


class NetnsError(RuntimeError):
    """Namespaces, veths or shaping could not be set up; the message says what is needed."""


def node_ip(index: int) -> str:
    """Address of node ``index`` (inside its namespace)."""
    return f"{SUBNET}.{10 + index}"


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    _run(cmd)


def _tc(netns: str, *args: str) -> None:
    _run(["ip", "netns", "exec", netns, "tc", *args])


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()}")


#: bytes a shaped link may send at once after an idle gap: at least a few full frames, else 2 ms of traffic
MIN_BURST = 4096


def tbf_args(mbit: float) -> list[str]:
    """``tc`` arguments of a token bucket at ``mbit`` Mbit/s: a burst of 2 ms of traffic (at least
    :data:`MIN_BURST` bytes; ``tbf`` splits larger offloaded segments) and a queue of up to 500 ms, so TCP
    sees a rate, not drops.

    The burst is what an idle link sends at once, ahead of its rate. It was 64 KiB (one offloaded
    segment) until 12-08: every message after an idle gap then had its first 64 KiB free, and a
    148.6 KB uplink message at 1 Mbit/s took 0.72 s where its rate gives 1.24 s (at GOODPUT); with
    4 KiB, 1.21 s. Measured with 2 ms while the test suite loaded both cores: 0.956 and 0.958 of 20 and
    50 Mbit/s, messages at their rate, no drops.
    """
    rate_bps = mbit * 1e6
    burst = max(MIN_BURST, int(rate_bps / 8 * 0.002))
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", "500ms"]


def check_can_create() -> None:
    """Raise :class:`NetnsError` with what is missing if this process cannot make namespaces."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetnsError(f"`{tool}` not found: install iproute2 (it provides ip and tc)")
    if os.geteuid() != 0:
        raise NetnsError(
            "emulated links need network namespaces, which need root (CAP_NET_ADMIN and CAP_SYS_ADMIN): "
            "run as root, e.g. `sudo -E fl-split bench edge`"
        )


def remove_stale() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone; return their names."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    removed = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class NodeLink:
    """One node's namespace, its address and the rates its link is shaped to."""

    netns: str
    ip: str
    link: LinkProfile


class ShapedNetwork:
    """A server namespace and ``len(links)`` node namespaces, each node on its own shaped link.

    Parameters
    ----------
    links:
        One :class:`~fl_split.link.LinkProfile` per node (its ``up_mbit`` shapes node → server,
        ``down_mbit`` server → node; ``0`` leaves that direction unshaped).
    """

    def __init__(self, links: Sequence[LinkProfile]) -> None:
        if not links:
            raise ValueError("a shaped network needs at least one node link")
        self.links = list(links)
        tag = f"{_PREFIX}{os.getpid()}"
        self.server_netns = f"{tag}-srv"
        self.nodes = [NodeLink(f"{tag}-n{i}", node_ip(i), link) for i, link in enumerate(self.links)]
        self._created: list[str] = []
        self._old_sigterm: Any = _NOT_TRAPPED

    @property
    def server_ip(self) -> str:
        """The server's address, as the nodes reach it."""
        return SERVER_IP

    @staticmethod
    def exec_prefix(netns: str) -> list[str]:
        """Arguments that run a command inside ``netns``: ``ip netns exec NETNS``."""
        return ["ip", "netns", "exec", netns]

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ShapedNetwork:
        check_can_create()
        remove_stale()
        self._trap_sigterm()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _trap_sigterm(self) -> None:
        """SIGTERM ends the run as Ctrl-C does, so ``__exit__`` removes what was made (main thread only)."""
        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread: the caller's handlers stay
            self._old_sigterm = _NOT_TRAPPED

    def _create(self) -> None:
        srv = self.server_netns
        self._add_netns(srv)
        _ip("link", "set", "lo", "up", netns=srv)
        _ip("link", "add", "flsbr", "type", "bridge", netns=srv)
        _ip("addr", "add", f"{SERVER_IP}/24", "dev", "flsbr", netns=srv)
        _ip("link", "set", "flsbr", "up", netns=srv)
        for i, node in enumerate(self.nodes):
            self._add_netns(node.netns)
            _ip("link", "set", "lo", "up", netns=node.netns)
            server_end, node_end = f"s{i}", f"n{i}"
            # made inside the server namespace, so no interface ever appears in the host's
            _ip("link", "add", server_end, "type", "veth", "peer", "name", node_end, "netns", node.netns, netns=srv)
            _ip("link", "set", server_end, "master", "flsbr", netns=srv)
            _ip("link", "set", server_end, "up", netns=srv)
            _ip("addr", "add", f"{node.ip}/24", "dev", node_end, netns=node.netns)
            _ip("link", "set", node_end, "up", netns=node.netns)
            if node.link.up_mbit > 0:
                _tc(node.netns, "qdisc", "add", "dev", node_end, "root", *tbf_args(node.link.up_mbit))
            if node.link.down_mbit > 0:
                _tc(srv, "qdisc", "add", "dev", server_end, "root", *tbf_args(node.link.down_mbit))
        self._wait_reachable()

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    def _wait_reachable(self, timeout_s: float = 10.0) -> None:
        """Each node reaches the server: a TCP connection to a closed port is refused (not unreachable)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            while True:
                if _reaches(node.netns, SERVER_IP):
                    break
                if time.monotonic() > deadline:
                    raise NetnsError(f"node namespace {node.netns} cannot reach {SERVER_IP} after {timeout_s:.0f} s")
                time.sleep(0.1)

    def close(self) -> None:
        """Delete every namespace made (their veths and bridge go with them); harmless to repeat.

        A second SIGTERM while deleting does not interrupt it (it is ignored until the namespaces are gone).
        """
        if self._old_sigterm is not _NOT_TRAPPED:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # main thread: it was trapped there
        try:
            while self._created:
                subprocess.run(["ip", "netns", "delete", self._created.pop()], capture_output=True, check=False)
        finally:
            if self._old_sigterm is not _NOT_TRAPPED:
                # None: a handler not set from Python; the default is the closest to restore
                signal.signal(signal.SIGTERM, signal.SIG_DFL if self._old_sigterm is None else self._old_sigterm)
                self._old_sigterm = _NOT_TRAPPED

    def leftovers(self) -> list[str]:
        """Namespaces of this network that still exist (empty after :meth:`close`)."""
        done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
        names = {line.split()[0] for line in done.stdout.splitlines() if line.split()}
        return sorted(names & {self.server_netns, *(n.netns for n in self.nodes)})


#: exit 0 when ``argv[1]:argv[2]`` accepts a TCP connection (or, with ``argv[3] == "refused-ok"``, refuses it:
#: the address is reachable)
_PROBE = """
import errno, socket, sys
s = socket.socket(); s.settimeout(1.0)
ok = (0, errno.ECONNREFUSED) if sys.argv[3:] == ["refused-ok"] else (0,)
sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) in ok else 1)
"""


def _probe(netns: str, ip: str, port: int, *extra: str) -> bool:
    import sys

    probe = ["ip", "netns", "exec", netns, sys.executable, "-S", "-c", _PROBE, ip, str(port), *extra]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def _reaches(netns: str, ip: str) -> bool:
    """Whether ``ip`` answers from inside ``netns`` (a closed port's refusal counts)."""
    return _probe(netns, ip, 9, "refused-ok")


def port_open(netns: str, ip: str, port: int) -> bool:
    """Whether something listens on ``ip:port`` as seen from inside ``netns``."""
    return _probe(netns, ip, port)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


_RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 16)
    if not b: break
    if t0 is None: t0 = time.perf_counter()
    n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""
_SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); c.sendall(bytes(int(sys.argv[3]))); c.close()
"""


_ACK_RECEIVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
m = int(sys.argv[3])
while True:
    n = 0
    while n < m:
        b = c.recv(1 << 16)
        if not b: sys.exit(0)
        n += len(b)
    c.sendall(b"k")
"""
_MESSAGE_SENDER = """
import json, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
m, n, gap = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
out = []
for _ in range(n):
    time.sleep(gap)
    t = time.perf_counter(); c.sendall(bytes(m))
    if c.recv(1) != b"k": sys.exit("the receiver closed the connection before its reply")
    out.append(time.perf_counter() - t)
print(json.dumps(out), flush=True)
"""


def _ends(network: ShapedNetwork, node: int, direction: str) -> tuple[str, str, str]:
    """``(receiver namespace, receiver address, sender namespace)`` of node ``node``'s link in ``direction``."""
    n = network.nodes[node]
    if direction == "up":
        return network.server_netns, network.server_ip, n.netns
    if direction == "down":
        return n.netns, n.ip, network.server_netns
    raise ValueError(f"direction is 'up' or 'down', got {direction!r}")


@contextmanager
def _receiver(
    network: ShapedNetwork, netns: str, what: str, script: str, *args: str
) -> Iterator[subprocess.Popen[str]]:
    """Run ``script`` (a receiver that prints ``ready`` once it listens) in ``netns``; killed on exit if running."""
    import sys

    recv = subprocess.Popen(
        [*network.exec_prefix(netns), sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "ready":
            raise NetnsError(f"the {what} receiver in {netns} did not start")
        yield recv
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()


def message_seconds(
    network: ShapedNetwork, node: int, direction: str, nbytes: int, count: int = 3, gap_s: float = 1.0
) -> list[float]:
    """Seconds each of ``count`` messages of ``nbytes`` takes over node ``node``'s link in ``direction``,
    each sent after ``gap_s`` idle seconds on one TCP connection and timed by the sender until a 1-byte
    reply: how split learning uses a link (a message, then a wait). On a faithful link about
    ``nbytes * 8 / (rate * GOODPUT)``; a shaper's burst shows up as messages faster than that."""
    import json
    import sys

    if nbytes < 1 or count < 1 or gap_s < 0:
        raise ValueError(f"nbytes and count must be >= 1 and gap_s >= 0, got {nbytes}, {count}, {gap_s}")
    recv_ns, recv_ip, send_ns = _ends(network, node, direction)
    port = "5202"
    with _receiver(network, recv_ns, "message", _ACK_RECEIVER, recv_ip, port, str(nbytes)) as recv:
        args = [recv_ip, port, str(nbytes), str(count), str(gap_s)]
        sent = subprocess.run(
            [*network.exec_prefix(send_ns), sys.executable, "-c", _MESSAGE_SENDER, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if sent.returncode != 0:
            raise NetnsError(f"timing messages over the {direction}link of {send_ns} failed: {sent.stderr.strip()}")
        recv.wait(timeout=30)
    return [float(t) for t in json.loads(sent.stdout)]


def measure_mbit(network: ShapedNetwork, node: int, direction: str, nbytes: int = 2_000_000) -> float:
    """Goodput of node ``node``'s link in ``direction`` (``"up"``: node → server, ``"down"``), Mbit/s:
    ``nbytes`` over one TCP connection, timed by the receiver from its first byte to the last."""
    import sys

    recv_ns, recv_ip, send_ns = _ends(network, node, direction)
    n = network.nodes[node]
    port = "5201"
    with _receiver(network, recv_ns, "throughput", _RECEIVER, recv_ip, port) as recv:
        subprocess.run(
            [*network.exec_prefix(send_ns), sys.executable, "-c", _SENDER, recv_ip, port, str(nbytes)],
            check=True,
            timeout=600,
        )
        assert recv.stdout is not None
        got, seconds = recv.stdout.readline().split()
        recv.wait(timeout=30)
    if int(got) != nbytes:
        raise NetnsError(f"sent {nbytes} bytes over {direction}link of {n.netns}, {got} arrived")
    return int(got) * 8 / float(seconds) / 1e6
