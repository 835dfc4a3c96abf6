"""The client end of the stream transport: one round of split learning over the announced stream.

Called by the ClientApp when ``sl_begin`` carries a stream address. The steps are those of
:func:`~fl_split.sl.client.client_handle` (the message transport), run by a
:class:`~fl_split.sl.client.ClientRound` that keeps the half live for the round, so the two
transports differ only in what carries the bytes::

    sl_begin (Flower)                      -> dial (token in the call metadata); frame: acts/labels of the first k
    frame: grads          <- server        -> apply, step; frame: acts/labels of the next k
    ...
    frame: last grads     <- server        -> apply, step; frame: bye; close the stream
    reply to sl_begin (Flower): done, weights[, momentum], counts

Every wait is bounded: dialing by ``connect_timeout_s``, each gradient by the ``stream_timeout_s``
the server announced. A broken or refused stream raises ``ConnectionError`` with the gRPC status, so
the ClientApp fails that message (the server has already dropped the client's steps).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import grpc

from fl_split.sl.client import ClientRound, ClientState
from fl_split.sl.frames import decode_frame, encode_frame
from fl_split.sl.stream_server import ADDRESS, CA, MAX_BYTES, METHOD, NODE, TIMEOUT, TOKEN, auth_metadata

_END = object()
#: ``fault(partition_id, round, step) -> True`` breaks the stream there (tests: a client vanishing mid-round).
StreamFault = Callable[[int, int, int], bool]


class StreamChannel:
    """One bidirectional stream to the split-learning server, with bounded waits.

    Parameters
    ----------
    address:
        ``host:port`` announced in ``sl_begin``.
    ca:
        PEM of the CA that signed the server's certificate (TLS); ``None``: plaintext.
    max_receive_bytes:
        Largest frame accepted from the server.
    connect_timeout_s:
        Give up dialing after this long (``ConnectionError`` naming the address and port).
    metadata:
        The call's metadata: :func:`~fl_split.sl.stream_server.auth_metadata` (the server admits
        the stream on it before reading any frame).
    """

    def __init__(
        self,
        address: str,
        ca: bytes | None,
        max_receive_bytes: int,
        connect_timeout_s: float = 30.0,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        self.address = address
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", int(max_receive_bytes))]
        if ca:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca), options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise ConnectionError(
                f"cannot reach the split-learning stream at {address} within {connect_timeout_s:g} s: the server "
                "machine must accept TCP connections on that port from this device (stream.port, firewall), "
                "stream.host must be an address this device can reach"
                + (", and its TLS certificate must name that host" if ca else "")
            ) from None
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self._in: queue.Queue[Any] = queue.Queue()
        self.call = self.channel.stream_stream(METHOD)(iter(self._out.get, None), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="sl-stream-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for data in self.call:
                self._in.put(data)
            self._in.put(_END)
        except grpc.RpcError as exc:
            self._in.put(exc)

    def send(self, frame: bytes) -> None:
        """Queue one frame for the server."""
        self._out.put(frame)

    def recv(self, timeout_s: float) -> bytes:
        """The server's next frame; ``TimeoutError`` / ``ConnectionError`` saying why there is none."""
        try:
            item = self._in.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(
                f"no gradient from the split-learning server at {self.address} within {timeout_s:g} s"
            ) from None
        if item is _END:
            raise ConnectionError(f"the server at {self.address} closed the stream before this round's last gradient")
        if isinstance(item, grpc.RpcError):
            code = item.code() if hasattr(item, "code") else None
            details = item.details() if hasattr(item, "details") else str(item)
            raise ConnectionError(
                f"the split-learning stream to {self.address} broke: {getattr(code, 'name', code)}: {details}"
            )
        return bytes(item)

    def finish(self, timeout_s: float = 10.0) -> None:
        """Close our side and wait (bounded) for the server to end the call."""
        self._out.put(None)
        self._reader.join(timeout_s)
        self.close()

    def close(self) -> None:
        """Cancel the call (if still open) and close the channel."""
        self._out.put(None)
        self.call.cancel()
        self.channel.close()


def stream_round(
    fields: dict[str, Any],
    state: ClientState | None,
    partition_id: int,
    num_partitions: int,
    *,
    connect_timeout_s: float = 30.0,
    fault: StreamFault | None = None,
) -> tuple[ClientState, dict[str, Any]]:
    """Run one round announced by ``sl_begin`` ``fields`` over its stream; return the state and the done reply.

    Raises
    ------
    ConnectionError
        The stream could not be dialed, was refused, or broke.
    TimeoutError
        The server sent no gradient within the announced ``stream_timeout_s``.
    """
    address, node, rnd = str(fields[ADDRESS]), int(fields[NODE]), int(fields["round"])
    timeout_s, max_bytes = float(fields[TIMEOUT]), int(fields[MAX_BYTES])
    ca = bytes(fields[CA]) if fields.get(CA) else None
    round_ = ClientRound(fields, state, partition_id, num_partitions)
    reply = round_.first_reply
    if reply.get("done"):
        return round_.state, reply
    channel = StreamChannel(address, ca, max_bytes, connect_timeout_s, auth_metadata(node, rnd, bytes(fields[TOKEN])))
    try:
        channel.send(encode_frame(reply))
        step = 0
        while True:
            grads = decode_frame(channel.recv(timeout_s))
            step += 1
            if fault is not None and fault(partition_id, rnd, step):
                raise ConnectionError(f"injected fault: partition {partition_id} dropped its stream at step {step}")
            reply = round_.step(grads)
            if reply.get("done"):
                channel.send(encode_frame({"bye": True}))
                channel.finish()
                return round_.state, reply
            channel.send(encode_frame(reply))
    finally:
        channel.close()
