"""The ``stream`` transport: Flower messages orchestrate the round, a gRPC stream carries its batches.

``sl_begin`` (weights, config) and each client's last reply (weights, counts) travel as Flower
messages, so sampling, ``context.state``, aggregation and evaluation are Flower's as with the
``messages`` transport. The per-batch payloads in between go over the
:class:`~fl_split.sl.stream_server.StreamServer` this transport runs next to the ServerApp: the
same fields, encoded as frames (:mod:`fl_split.sl.frames`) and measured with the same
:func:`~fl_split.sl.wire.field_nbytes`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from types import TracebackType
from typing import Any

from fl_split.config import ConfigError
from fl_split.sl.client import BEGIN
from fl_split.sl.config import SLConfig, StreamKeys
from fl_split.sl.frames import encode_frame
from fl_split.sl.stream_server import ADDRESS, CA, MAX_BYTES, NODE, TIMEOUT, TOKEN, StreamServer, TlsFiles
from fl_split.sl.transport.base import Reply
from fl_split.sl.transport.flower import FlowerTransport
from fl_split.sl.wire import field_nbytes

log = logging.getLogger(__name__)

#: How often the transport also asks Flower for replies (the round's last replies and errors): each
#: pull is a call to the SuperLink, and only a round's end waits on it.
FLOWER_POLL_S = 0.25


def outward_ip() -> str:
    """This machine's address on the interface that routes outward; ``127.0.0.1`` when there is none.

    No packet is sent (a UDP socket is only connected, which picks the route).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routed like any remote host, never reached
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def is_loopback(bind: str) -> bool:
    """Whether ``bind`` is this machine only (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def tls_from_config(stream: StreamKeys) -> TlsFiles | None:
    """The stream's TLS files, or ``None`` when none is configured."""
    if not stream["ssl_certfile"]:
        return None
    return TlsFiles(stream["ssl_certfile"], stream["ssl_keyfile"], stream["ssl_ca_certfile"] or stream["ssl_certfile"])


class StreamTransport:
    """Flower for ``sl_begin`` and the round's last replies; a :class:`StreamServer` for the steps.

    Parameters
    ----------
    flower:
        The message transport over the ServerApp's grid.
    server:
        A started stream server (this transport stops it in :meth:`close`).
    host:
        The host clients dial (the address announced is ``host:server.port``).
    """

    def __init__(self, flower: FlowerTransport, server: StreamServer, host: str) -> None:
        self.flower = flower
        self.server = server
        self.address = f"{host}:{server.port}"
        self._ca = server.ca_pem
        self._last_pull = 0.0
        self._window: dict[int, list[float]] = {}  # round -> [first stream reply, last stream reply] times

    @classmethod
    def from_config(cls, flower: FlowerTransport, config: SLConfig, *, local: bool = False) -> StreamTransport:
        """The transport ``config.stream`` describes; ``local`` (simulation) binds and announces 127.0.0.1
        when ``stream.host`` is ``auto``."""
        stream = config.stream
        host = stream["host"]
        bind = stream["bind"]
        if host == "auto":
            host = "127.0.0.1" if local else outward_ip()
            bind = "127.0.0.1" if local else bind
        tls = tls_from_config(stream)
        if tls is None and not is_loopback(bind) and not stream["insecure"]:
            raise ConfigError(
                f"the split-learning stream would listen on {bind} in plaintext: anyone on the network could read "
                "the activations and labels. Give it TLS (stream.ssl_certfile, stream.ssl_keyfile; `fl-split certs` "
                "makes a set), bind it to 127.0.0.1, or set stream.insecure=true to accept plaintext"
            )
        server = StreamServer(
            bind,
            int(stream["port"]),
            max_message_bytes=int(float(stream["max_message_mb"]) * (1 << 20)),
            timeout_s=float(stream["timeout_s"]),
            idle_timeout_s=float(stream["idle_timeout_s"]),
            tls=tls,
            # one stream per client and round, a refused replay or two, never hundreds of idle calls
            max_streams=2 * config.clients + 8,
        )
        transport = cls(flower, server, host)
        log.info(
            "split-learning stream listening on %s:%d, announced as %s (%s)",
            bind,
            server.port,
            transport.address,
            "TLS" if server.tls else "plaintext: set stream.ssl_* for TLS",
        )
        return transport

    def node_ids(self) -> list[int]:
        """The connected SuperNodes (as Flower reports them)."""
        return self.flower.node_ids()

    def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
        """``sl_begin`` as a Flower message announcing the stream; anything else as a frame on the node's stream."""
        if kind == BEGIN:
            self.server.open_round(round_)
            announce: dict[str, Any] = {
                ADDRESS: self.address,
                NODE: node_id,
                TOKEN: self.server.token(node_id),
                TIMEOUT: self.server.timeout_s,
                MAX_BYTES: self.server.max_message_bytes,
            }
            if self._ca:
                announce[CA] = self._ca
            return self.flower.send(node_id, kind, {**fields, **announce}, round_)
        if not self.server.send(node_id, encode_frame(fields)):
            return {}  # the stream is gone; its error reply is already queued
        return field_nbytes(fields)

    def release(self, node_id: int) -> None:
        """Close ``node_id``'s stream if it is still open (the strategy dropped it): its client stops waiting."""
        self.server.close_stream(node_id)

    def receive(self, timeout_s: float | None = None) -> list[Reply]:
        """Stream frames as they arrive; Flower's replies every :data:`FLOWER_POLL_S` seconds (for at most
        ``min(flower.timeout_s, timeout_s)`` seconds)."""
        if not self.flower.pending and self.server.inbound.empty():
            raise TimeoutError("no message or stream is awaiting a reply")
        limit = self.flower.timeout_s if timeout_s is None else min(self.flower.timeout_s, timeout_s)
        deadline = time.monotonic() + limit
        while True:
            replies = self.server.drain(FLOWER_POLL_S)
            now = time.monotonic()
            for r in replies:
                window = self._window.setdefault(r.round, [now, now])
                window[1] = now
            if self.flower.pending and now - self._last_pull >= FLOWER_POLL_S:
                self._last_pull = now
                replies += self.flower.poll()
            if replies:
                return replies
            if now > deadline:
                raise TimeoutError(f"no stream frame or Flower reply within {limit:.0f} s")

    def stats(self, round_: int) -> dict[str, Any]:
        """Stream counters for a round's metrics row: seconds from its first to its last stream reply."""
        first, last = self._window.get(round_, [0.0, 0.0])
        return {
            "stream_s": round(last - first, 4),
            "stream_refused": self.server.refused,
            "stream_broken": self.server.broken,
        }

    def close(self) -> None:
        """Stop the stream server (every open stream ends)."""
        self.server.stop()

    def __enter__(self) -> StreamTransport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
