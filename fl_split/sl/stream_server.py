"""The server end of the stream transport: a gRPC server with one bidirectional stream per client and round.

Flower still carries each round's ``sl_begin`` and the client's last reply; within the round, a
client dials the address announced in ``sl_begin`` and exchanges per-batch frames
(:mod:`fl_split.sl.frames`) here, in lock step: one frame of activations in, one frame of gradients
out. The exchange is one generic gRPC method over raw bytes (no protobuf, no pickle).

Admission: the first frame of a stream is a *hello* — the client's node id, the round and a token,
``HMAC-SHA256(round secret, "round:node")``. The round secret is fresh each round and never leaves
this process; each node gets its own token in its ``sl_begin`` message. A hello with a wrong token
or round is refused (``PERMISSION_DENIED``) before any other frame is read. Frames larger than
``max_message_bytes`` are refused by gRPC itself (``RESOURCE_EXHAUSTED``) before they reach a
decoder. With TLS files the server speaks only TLS.

A stream that ends without the client's ``bye`` frame (a disconnect, a crash, a cancelled call)
becomes an error :class:`~fl_split.sl.transport.Reply` for that node, so the strategy drops its
steps, counts them, and goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fl_split.sl.frames import FrameError, decode_frame, encode_frame
from fl_split.sl.transport.base import Reply
from fl_split.sl.wire import field_nbytes

log = logging.getLogger(__name__)

SERVICE = "flsplit.SplitLearningStream"
#: The one RPC: ``stream bytes -> stream bytes``.
METHOD = f"/{SERVICE}/Exchange"
#: A hello frame is a few dozen bytes; anything bigger is refused unread.
HELLO_MAX_BYTES = 512
#: Fields of ``sl_begin`` that announce the stream (the client's side reads them).
ADDRESS, NODE, TOKEN, CA, TIMEOUT, MAX_BYTES = (
    "stream_address",
    "stream_node",
    "stream_token",
    "stream_ca",
    "stream_timeout_s",
    "stream_max_bytes",
)
_CLOSED = object()  # outbound sentinel: the round is over (or the server stops)
_GONE = object()  # outbound sentinel: the RPC terminated (the client cancelled or vanished)


def make_token(secret: bytes, round_: int, node: int) -> bytes:
    """The token node ``node`` must present in round ``round_``."""
    return hmac.new(secret, f"{round_}:{node}".encode(), hashlib.sha256).digest()


def hello_frame(node: int, round_: int, token: bytes) -> bytes:
    """The first frame a client sends on a stream."""
    return encode_frame({"node": node, "round": round_, "token": token})


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the stream server: the same ones ``flower-superlink --ssl-*`` takes.

    ``ca_certfile`` is sent to the clients in ``sl_begin`` (over Flower's own channel) so they can
    verify the server; the certificate must name the host the clients dial (``stream.host``).
    """

    certfile: str
    keyfile: str
    ca_certfile: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(certificate chain, private key, CA certificate), read from disk."""
        out = []
        for what, path in (
            ("ssl_certfile", self.certfile),
            ("ssl_keyfile", self.keyfile),
            ("ssl_ca_certfile", self.ca_certfile),
        ):
            try:
                out.append(Path(path).expanduser().read_bytes())
            except OSError as exc:
                raise FileNotFoundError(f"stream.{what}={path!r} cannot be read ({exc.strerror})") from None
        return out[0], out[1], out[2]


class StreamServer:
    """A gRPC server that admits one stream per (round, node) and queues what arrives as replies.

    Parameters
    ----------
    bind:
        Interface to listen on (``0.0.0.0``: all; ``127.0.0.1``: this machine only).
    port:
        TCP port; 0 picks a free one (:attr:`port` says which).
    max_message_bytes:
        Largest frame accepted; a larger one breaks that client's stream before it is decoded.
    timeout_s:
        How long a stream waits for the strategy's answer before giving up on it.
    tls:
        Serve TLS with these files; ``None``: plaintext (the token still admits clients).
    max_workers:
        Threads serving streams: one per connected client (idle threads are not created).
    """

    def __init__(
        self,
        bind: str = "0.0.0.0",
        port: int = 0,
        *,
        max_message_bytes: int = 64 << 20,
        timeout_s: float = 300.0,
        tls: TlsFiles | None = None,
        max_workers: int = 512,
    ) -> None:
        self.max_message_bytes = int(max_message_bytes)
        self.timeout_s = float(timeout_s)
        self.tls = tls
        #: the CA certificate clients verify this server with (``b""``: plaintext)
        self.ca_pem = b""
        self.inbound: queue.Queue[Reply] = queue.Queue()
        self._lock = threading.Lock()
        self._round = 0
        self._secret = secrets.token_bytes(32)
        self._outbound: dict[int, queue.Queue[Any]] = {}
        #: counters: streams refused at hello, streams that broke, frames in and out
        self.refused = 0
        self.broken = 0
        self.frames_in = 0
        self.frames_out = 0
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sl-stream"),
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ],
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Exchange": grpc.stream_stream_rpc_method_handler(self._exchange)}
        )
        self._server.add_generic_rpc_handlers((handler,))
        address = f"{bind}:{port}"
        try:
            if tls is None:
                self.port = self._server.add_insecure_port(address)
            else:
                cert, key, self.ca_pem = tls.read()
                self.port = self._server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        except RuntimeError as exc:
            raise OSError(
                f"the split-learning stream cannot listen on {address} ({exc}): choose another stream.port"
            ) from None
        if not self.port:
            raise OSError(f"the split-learning stream cannot listen on {address}: choose another stream.port")
        self._server.start()

    # ------------------------------------------------------------------ strategy side
    def open_round(self, round_: int) -> None:
        """Start admitting streams for ``round_`` (fresh secret); streams of an earlier round are closed."""
        with self._lock:
            if round_ == self._round:
                return
            self._round, self._secret = round_, secrets.token_bytes(32)
            stale, self._outbound = self._outbound, {}
        for q in stale.values():
            q.put(_CLOSED)

    def token(self, node: int) -> bytes:
        """The token ``node`` presents in the current round."""
        with self._lock:
            return make_token(self._secret, self._round, node)

    def send(self, node: int, frame: bytes) -> bool:
        """Queue ``frame`` for ``node``'s open stream; ``False`` when it has none (it broke: its error is queued)."""
        with self._lock:
            q = self._outbound.get(node)
        if q is None:
            return False
        q.put(frame)
        return True

    def close_stream(self, node: int) -> None:
        """End ``node``'s stream of this round, if open (no error reply: the strategy asked for it)."""
        with self._lock:
            q = self._outbound.pop(node, None)
        if q is not None:
            q.put(_CLOSED)

    def drain(self, wait_s: float) -> list[Reply]:
        """What arrived: wait up to ``wait_s`` for the first reply, then take all that are queued."""
        try:
            out = [self.inbound.get(timeout=wait_s) if wait_s > 0 else self.inbound.get_nowait()]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(self.inbound.get_nowait())
            except queue.Empty:
                return out

    def stop(self, grace_s: float = 1.0) -> None:
        """Close every stream and stop listening."""
        with self._lock:
            stale, self._outbound = self._outbound, {}
        for q in stale.values():
            q.put(_CLOSED)
        self._server.stop(grace_s).wait(grace_s + 5.0)

    # ------------------------------------------------------------------ gRPC side
    def _admit(self, first: bytes, context: grpc.ServicerContext) -> tuple[int, int, queue.Queue[Any]]:
        """Check the hello; register the node's outbound queue; abort the RPC when refused."""
        why = None
        node = rnd = -1
        if len(first) > HELLO_MAX_BYTES:
            why = f"a first frame of {len(first)} bytes is not a hello (at most {HELLO_MAX_BYTES})"
        else:
            try:
                hello = decode_frame(first)
                node, rnd, token = int(hello["node"]), int(hello["round"]), bytes(hello["token"])
            except (FrameError, KeyError, TypeError, ValueError) as exc:
                why = f"malformed hello ({exc})"
        if why is None:
            with self._lock:
                expected = make_token(self._secret, self._round, node)
                if rnd != self._round or not hmac.compare_digest(token, expected):
                    why = f"wrong token for node {node} in round {rnd} (the server is in round {self._round})"
                elif node in self._outbound:
                    why = f"node {node} already has a stream open in round {rnd}"
                else:
                    q: queue.Queue[Any] = queue.Queue()
                    self._outbound[node] = q
                    return node, rnd, q
        self.refused += 1
        log.warning("refused a split-learning stream from %s: %s", context.peer(), why)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"stream refused: {why}")
        raise AssertionError("unreachable: context.abort raises")

    def _exchange(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            first = next(requests)
        except (StopIteration, grpc.RpcError):
            return
        node, rnd, q = self._admit(first, context)
        context.add_callback(lambda: q.put(_GONE))  # the RPC ended (also: the client vanished)
        outcome = "ended without the client's last frame"
        try:
            for data in requests:
                fields = decode_frame(data)  # gRPC already refused frames over max_message_bytes
                self.frames_in += 1
                if fields.get("bye"):
                    outcome = ""
                    continue
                self.inbound.put(Reply(node, fields, None, field_nbytes(fields), rnd))
                try:
                    answer = q.get(timeout=self.timeout_s)
                except queue.Empty:
                    outcome = f"got no answer from the server loop within {self.timeout_s:g} s"
                    return
                if answer is _CLOSED:
                    outcome = ""  # the strategy is done with this node (it dropped it, or the round ended)
                    return
                if answer is _GONE:
                    return
                self.frames_out += 1
                yield answer
        except FrameError as exc:
            outcome = f"sent a malformed frame ({exc})"
            self._fail(node, rnd, outcome)
            outcome = ""
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed frame: {exc}")
        except grpc.RpcError as exc:  # the request side broke (cancelled, oversize, connection lost)
            code = exc.code().name if callable(getattr(exc, "code", None)) else ""
            outcome = f"broke{' ' + code if code else ''} (the client cancelled the call or its connection was lost)"
        finally:
            with self._lock:
                if self._outbound.get(node) is q:
                    del self._outbound[node]
            if outcome:
                self._fail(node, rnd, f"stream {outcome}")

    def _fail(self, node: int, rnd: int, why: str) -> None:
        self.broken += 1
        log.warning("split-learning stream of node %d, round %d: %s", node, rnd, why)
        self.inbound.put(Reply(node, None, why, round=rnd))
