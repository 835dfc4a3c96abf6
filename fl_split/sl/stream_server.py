"""The server end of the stream transport: a gRPC server with one bidirectional stream per client and round.

Flower still carries each round's ``sl_begin`` and the client's last reply; within the round, a
client dials the address announced in ``sl_begin`` and exchanges per-batch frames
(:mod:`fl_split.sl.frames`) here, in lock step: one frame of activations in, one frame of gradients
out. The exchange is one generic gRPC method over raw bytes (no protobuf, no pickle).

Admission happens before any message of the call is read: the client's node id, the round and its
token, ``HMAC-SHA256(round secret, "round:node")`` (exactly 32 bytes), travel in the call's
metadata (:func:`auth_metadata`), and a server interceptor checks them when the call starts. The
round secret is fresh each round and never leaves this process; each node gets its own token in its
``sl_begin`` message (over Flower's channel, so the stream's trust rests on that channel: use a TLS
SuperLink, and TLS here). A token admits one stream: it is spent when its stream is admitted, so a
replayed call is refused even after the first one closed. A call with a missing, malformed or wrong
token is refused (``PERMISSION_DENIED``) and counted; no worker thread waits on it. An admitted
stream must send its first frame within ``first_frame_timeout_s`` and each next one within
``idle_timeout_s`` of its last gradient (a watchdog cancels the call otherwise); at most
``max_streams`` calls run at once (gRPC refuses more with ``RESOURCE_EXHAUSTED``). When the
strategy is done with a stream (it dropped the client, the round ended, the server stops) the call
is ended at once, also while it waits for the client's next frame: no worker thread is left behind. Frames larger than
``max_message_bytes`` are refused by gRPC itself (``RESOURCE_EXHAUSTED``) before they reach a
decoder, and a frame the protocol does not expect (anything but a batch, or ``bye`` once) ends the
stream (``INVALID_ARGUMENT``). With TLS files the server speaks only TLS.

A stream that ends without the client's ``bye`` frame (a disconnect, a crash, a cancelled call)
becomes an error :class:`~fl_split.sl.transport.Reply` for that node, so the strategy drops its
steps, counts them, and goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fl_split.sl.frames import FrameError, decode_frame
from fl_split.sl.transport.base import Reply
from fl_split.sl.wire import field_nbytes

log = logging.getLogger(__name__)

SERVICE = "flsplit.SplitLearningStream"
#: The one RPC: ``stream bytes -> stream bytes``.
METHOD = f"/{SERVICE}/Exchange"
#: Call metadata carrying the admission (``-bin``: binary values).
META_NODE, META_ROUND, META_TOKEN = "fl-split-node", "fl-split-round", "fl-split-token-bin"
#: An HMAC-SHA256 token.
TOKEN_BYTES = 32
#: Fields an inbound batch frame may hold (the client's reply to a gradient, minus ``done``).
BATCH_FIELDS = frozenset({"acts", "labels", "done", "t_client", "t_codec"})
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


@dataclass
class _Stream:
    """One admitted stream: the answers queued for it, its call, and by when the client's next frame is due."""

    queue: queue.Queue[Any] = field(default_factory=queue.Queue)
    context: Any = None  # the call's ServicerContext, once its handler runs
    deadline: float = math.inf  # time.monotonic() by which the client's next frame is due (inf: none is)
    late: str = ""  # what the stream did wrong if the deadline passes
    closed: bool = False  # the server side ended it (the strategy is done with it): no error reply
    expired: str = ""  # set by the watchdog when it ended the call at its deadline

    def end(self) -> None:
        """The strategy is done with this stream: wake its handler, and end the call if it waits on the client."""
        self.closed = True
        self.queue.put(_CLOSED)
        if self.context is not None and self.deadline < math.inf:
            self.context.cancel()


def make_token(secret: bytes, round_: int, node: int) -> bytes:
    """The token node ``node`` must present in round ``round_``."""
    return hmac.new(secret, f"{round_}:{node}".encode(), hashlib.sha256).digest()


def auth_metadata(node: int, round_: int, token: bytes) -> tuple[tuple[str, str | bytes], ...]:
    """The call metadata a client opens its stream with."""
    return ((META_NODE, str(node)), (META_ROUND, str(round_)), (META_TOKEN, bytes(token)))


def read_auth(metadata: Any) -> tuple[int, int, bytes]:
    """``(node, round, token)`` from call metadata; ``ValueError`` saying what is missing or malformed."""
    items: dict[str, Any] = {}
    for item in metadata or ():
        items.setdefault(item[0], item[1])
    try:
        node, rnd, token = int(items[META_NODE]), int(items[META_ROUND]), items[META_TOKEN]
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]} in the call metadata") from None
    except (TypeError, ValueError):
        raise ValueError("the node id and round in the call metadata must be integers") from None
    if not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
        size = len(token) if isinstance(token, bytes | str) else type(token).__name__
        raise ValueError(f"malformed token ({size} bytes; a token is exactly {TOKEN_BYTES})")
    return node, rnd, token


class _Admission(grpc.ServerInterceptor):  # type: ignore[misc]
    """Checks a call's token before its handler runs (no message of the call has been read then)."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        why = self.server._admit(details.invocation_metadata)
        if why is None:
            return continuation(details)

        def deny(requests: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"stream refused: {why}")
            yield b""  # pragma: no cover - abort raises

        return grpc.stream_stream_rpc_method_handler(deny)


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
    max_streams:
        Calls served at once (gRPC refuses more); about the number of clients.
    first_frame_timeout_s:
        An admitted stream that sends no frame within this long is ended.
    idle_timeout_s:
        A stream whose next frame does not arrive within this long of its last gradient is ended.
    """

    def __init__(
        self,
        bind: str = "0.0.0.0",
        port: int = 0,
        *,
        max_message_bytes: int = 64 << 20,
        timeout_s: float = 300.0,
        tls: TlsFiles | None = None,
        max_streams: int = 64,
        first_frame_timeout_s: float = 30.0,
        idle_timeout_s: float = 120.0,
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
        self._outbound: dict[int, _Stream] = {}
        self._spent: set[tuple[int, int]] = set()  # (round, node) whose token admitted a stream
        self.first_frame_timeout_s = float(first_frame_timeout_s)
        self.idle_timeout_s = float(idle_timeout_s)
        #: counters: calls refused at admission, streams that broke, frames in and out
        self.refused = 0
        self.broken = 0
        self.frames_in = 0
        self.frames_out = 0
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_streams + 2, thread_name_prefix="sl-stream"),
            interceptors=[_Admission(self)],
            maximum_concurrent_rpcs=max_streams,
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
        self._stopping = threading.Event()
        tick = max(0.05, min(1.0, self.first_frame_timeout_s / 5, self.idle_timeout_s / 5))
        self._watchdog = threading.Thread(target=self._watch, args=(tick,), name="sl-stream-watchdog", daemon=True)
        self._watchdog.start()

    # ------------------------------------------------------------------ strategy side
    def open_round(self, round_: int) -> None:
        """Start admitting streams for ``round_`` (fresh secret); streams of an earlier round are closed."""
        with self._lock:
            if round_ == self._round:
                return
            self._round, self._secret = round_, secrets.token_bytes(32)
            stale, self._outbound = self._outbound, {}
            self._spent = {k for k in self._spent if k[0] >= round_}
        for stream in stale.values():
            stream.end()

    def token(self, node: int) -> bytes:
        """The token ``node`` presents in the current round."""
        with self._lock:
            return make_token(self._secret, self._round, node)

    def send(self, node: int, frame: bytes) -> bool:
        """Queue ``frame`` for ``node``'s open stream; ``False`` when it has none (it broke: its error is queued)."""
        with self._lock:
            stream = self._outbound.get(node)
        if stream is None:
            return False
        stream.queue.put(frame)
        return True

    def close_stream(self, node: int) -> None:
        """End ``node``'s stream of this round, if open (no error reply: the strategy asked for it)."""
        with self._lock:
            stream = self._outbound.pop(node, None)
        if stream is not None:
            stream.end()

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
        self._stopping.set()
        with self._lock:
            stale, self._outbound = self._outbound, {}
        for stream in stale.values():
            stream.end()
        self._server.stop(grace_s).wait(grace_s + 5.0)

    # ------------------------------------------------------------------ gRPC side
    def _admit(self, metadata: Any) -> str | None:
        """Check a call's metadata and spend its token: ``None`` (admitted, its queue registered) or why not."""
        try:
            node, rnd, token = read_auth(metadata)
        except ValueError as exc:
            why = str(exc)
        else:
            with self._lock:
                expected = make_token(self._secret, self._round, node)
                if rnd != self._round or not hmac.compare_digest(token, expected):
                    why = f"wrong token for node {node} in round {rnd} (the server is in round {self._round})"
                elif (rnd, node) in self._spent:
                    why = f"node {node}'s token for round {rnd} was already used (a stream is admitted once)"
                else:
                    self._spent.add((rnd, node))
                    self._outbound[node] = _Stream()
                    return None
        with self._lock:
            self.refused += 1
        log.warning("refused a split-learning stream: %s", why)
        return why

    def _watch(self, tick: float) -> None:
        """End every call whose client frame is overdue (the watchdog thread)."""
        while not self._stopping.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [
                    s for s in self._outbound.values() if s.deadline < now and s.context is not None and not s.expired
                ]
                for stream in late:
                    stream.expired, stream.deadline = stream.late, math.inf
            for stream in late:
                stream.context.cancel()

    def _await_client(self, stream: _Stream, within_s: float, late: str) -> None:
        with self._lock:
            stream.deadline, stream.late = time.monotonic() + within_s, late

    def _exchange(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        node, rnd, _ = read_auth(context.invocation_metadata())  # admitted: well formed
        with self._lock:
            stream = self._outbound.get(node)
            if stream is not None:
                stream.context = context
        if stream is None:  # the round moved on between admission and now
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "stream refused: its round is over")
            return
        q = stream.queue
        context.add_callback(lambda: q.put(_GONE))  # the RPC ended (also: the client vanished)
        outcome = "ended without the client's last frame"
        idle = f"sent no frame for {self.idle_timeout_s:g} s after its last gradient"
        self._await_client(
            stream,
            self.first_frame_timeout_s,
            f"sent no frame within {self.first_frame_timeout_s:g} s of being admitted",
        )
        said_bye = False
        try:
            for data in requests:
                with self._lock:
                    stream.deadline = math.inf
                fields = decode_frame(data)  # gRPC already refused frames over max_message_bytes
                with self._lock:
                    self.frames_in += 1
                if said_bye or (set(fields) - BATCH_FIELDS and set(fields) != {"bye"}) or fields.get("done"):
                    raise FrameError(f"a frame the protocol does not expect here (fields {sorted(fields)})")
                if fields.get("bye"):
                    said_bye, outcome = True, ""
                    self._await_client(stream, self.idle_timeout_s, "")  # then the client ends its side
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
                with self._lock:
                    self.frames_out += 1
                self._await_client(stream, self.idle_timeout_s, idle)
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
                stream.deadline = math.inf
                if self._outbound.get(node) is stream:
                    del self._outbound[node]
                closed, expired = stream.closed, stream.expired
            if closed:
                outcome = ""  # the server side ended it: the strategy already knows
            elif expired and outcome:
                outcome = expired
            if outcome:
                self._fail(node, rnd, f"stream {outcome}")

    def _fail(self, node: int, rnd: int, why: str) -> None:
        with self._lock:
            self.broken += 1
        log.warning("split-learning stream of node %d, round %d: %s", node, rnd, why)
        self.inbound.put(Reply(node, None, why, round=rnd))
