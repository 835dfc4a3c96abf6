"""The stream transport's two ends through real gRPC on 127.0.0.1: admission, limits, faults, TLS, timeouts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fl_split.sl.frames import encode_frame
from fl_split.sl.stream_client import StreamChannel
from fl_split.sl.stream_server import METHOD, StreamServer, TlsFiles, hello_frame, make_token
from fl_split.sl.transport import Reply
from simulations.certs import make_certs
from simulations.deploy import free_port

NODE = (1 << 63) + 12345  # Flower node ids are unsigned 64-bit


@pytest.fixture
def server() -> Iterator[StreamServer]:
    srv = StreamServer("127.0.0.1", 0, max_message_bytes=64 << 10, timeout_s=5.0)
    srv.open_round(1)
    yield srv
    srv.stop(0)


def _dial(srv: StreamServer, ca: bytes | None = None, host: str = "127.0.0.1") -> StreamChannel:
    return StreamChannel(f"{host}:{srv.port}", ca, 64 << 20, connect_timeout_s=5.0)


def _wait_reply(srv: StreamServer, timeout_s: float = 5.0) -> Reply:
    replies = srv.drain(timeout_s)
    assert len(replies) == 1, replies
    return replies[0]


def test_lock_step_exchange_measures_the_same_bytes(server: StreamServer) -> None:
    ch = _dial(server)
    ch.send(hello_frame(NODE, 1, server.token(NODE)))
    ch.send(encode_frame({"acts": [b"a" * 100], "labels": [b"l" * 7], "done": False, "t_client": 0.5}))
    reply = _wait_reply(server)
    assert (reply.node_id, reply.round, reply.error) == (NODE, 1, None)
    assert reply.fields == {"acts": [b"a" * 100], "labels": [b"l" * 7], "done": False, "t_client": 0.5}
    assert reply.nbytes == {"activation": 100, "label": 7}  # field_nbytes, as on the message transport
    assert server.send(NODE, encode_frame({"grads": [b"g" * 40]}))
    assert ch.recv(5.0) == encode_frame({"grads": [b"g" * 40]})
    ch.send(encode_frame({"bye": True}))
    ch.finish()
    time.sleep(0.3)
    assert server.drain(0.2) == []  # a clean end is not an error
    assert (server.frames_in, server.frames_out, server.refused, server.broken) == (2, 1, 0, 0)
    assert not server.send(NODE, b"x")  # the stream is gone


@pytest.mark.parametrize("case", ["wrong token", "last round's token", "other node's token", "not a hello"])
def test_a_stream_without_its_token_is_refused_before_any_frame_is_decoded(server: StreamServer, case: str) -> None:
    token = {
        "wrong token": b"\x00" * 32,
        "last round's token": server.token(NODE),
        "other node's token": server.token(NODE + 1),
        "not a hello": b"",
    }[case]
    if case == "last round's token":
        server.open_round(2)
    ch = _dial(server)
    ch.send(encode_frame({"acts": [b"a"]}) if case == "not a hello" else hello_frame(NODE, 1, token))
    ch.send(encode_frame({"acts": [b"a" * 10]}))
    with pytest.raises(ConnectionError, match="PERMISSION_DENIED: stream refused"):
        ch.recv(5.0)
    ch.close()
    assert server.refused == 1 and server.frames_in == 0
    assert server.drain(0.3) == []  # nothing reached the strategy


def test_a_frame_over_the_limit_is_refused_by_grpc_and_the_client_is_dropped(server: StreamServer) -> None:
    ch = _dial(server)
    ch.send(hello_frame(NODE, 1, server.token(NODE)))
    ch.send(encode_frame({"acts": [b"a" * (65 << 10)]}))  # over max_message_bytes = 64 KiB
    with pytest.raises(ConnectionError, match=r"RESOURCE_EXHAUSTED|CANCELLED|broke"):
        ch.recv(5.0)
    ch.close()
    reply = _wait_reply(server)
    assert reply.node_id == NODE and reply.fields is None and "stream" in str(reply.error)
    assert server.frames_in == 0  # never decoded


def test_a_malformed_frame_drops_the_client_with_the_reason(server: StreamServer) -> None:
    ch = _dial(server)
    ch.send(hello_frame(NODE, 1, server.token(NODE)))
    ch.send(b"FLSF\x01\x01\x00\x01a\x09")
    with pytest.raises(ConnectionError, match="INVALID_ARGUMENT: malformed frame"):
        ch.recv(5.0)
    ch.close()
    reply = _wait_reply(server)
    assert reply.fields is None and "unknown type tag 9" in str(reply.error)


def test_a_client_that_vanishes_mid_round_becomes_an_error_reply(server: StreamServer) -> None:
    ch = _dial(server)
    ch.send(hello_frame(NODE, 1, server.token(NODE)))
    ch.send(encode_frame({"acts": [b"a"]}))
    assert _wait_reply(server).error is None
    ch.close()  # cancel the call: the device went away while the server computes its gradient
    t0 = time.monotonic()
    reply = _wait_reply(server)
    assert reply.fields is None and "without the client's last frame" in str(reply.error)
    assert time.monotonic() - t0 < 3.0 and server.broken == 1


def test_the_server_gives_up_on_a_stream_its_loop_never_answers() -> None:
    srv = StreamServer("127.0.0.1", 0, timeout_s=0.5)
    srv.open_round(1)
    try:
        ch = _dial(srv)
        ch.send(hello_frame(7, 1, srv.token(7)))
        ch.send(encode_frame({"acts": [b"a"]}))
        assert _wait_reply(srv).error is None
        reply = _wait_reply(srv, 3.0)  # nobody calls srv.send(7, ...)
        assert "got no answer from the server loop within 0.5 s" in str(reply.error)
        with pytest.raises(ConnectionError, match="closed the stream"):
            ch.recv(3.0)
        ch.close()
    finally:
        srv.stop(0)


def test_the_client_gives_up_on_a_gradient_that_does_not_come(server: StreamServer) -> None:
    ch = _dial(server)
    ch.send(hello_frame(NODE, 1, server.token(NODE)))
    ch.send(encode_frame({"acts": [b"a"]}))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no gradient .* within 0.6 s"):
        ch.recv(0.6)
    assert time.monotonic() - t0 < 2.0
    ch.close()


def test_a_new_round_closes_the_streams_of_the_last_one(server: StreamServer) -> None:
    ch = _dial(server)
    ch.send(hello_frame(NODE, 1, server.token(NODE)))
    ch.send(encode_frame({"acts": [b"a"]}))
    _wait_reply(server)
    server.open_round(2)
    with pytest.raises(ConnectionError, match="closed the stream"):
        ch.recv(3.0)
    ch.close()
    assert server.drain(0.3) == []  # the server ended it: no error reply for the strategy


def test_dialing_nothing_fails_fast_and_names_the_port() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port} within 1 s.*firewall"):
        StreamChannel(f"127.0.0.1:{port}", None, 1 << 20, connect_timeout_s=1.0)
    assert time.monotonic() - t0 < 5.0


def test_tls_stream_admits_a_client_with_the_ca_and_refuses_plaintext(tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    srv = StreamServer("127.0.0.1", 0, tls=TlsFiles(str(cert), str(key), str(ca)))
    srv.open_round(1)
    try:
        ch = _dial(srv, ca=ca.read_bytes())
        ch.send(hello_frame(3, 1, srv.token(3)))
        ch.send(encode_frame({"acts": [b"secret activations"]}))
        assert _wait_reply(srv).fields == {"acts": [b"secret activations"]}
        assert srv.send(3, encode_frame({"grads": [b"g"]}))
        assert ch.recv(5.0) == encode_frame({"grads": [b"g"]})
        ch.close()
        with pytest.raises(ConnectionError, match="cannot reach"):  # plaintext cannot talk to a TLS server
            StreamChannel(f"127.0.0.1:{srv.port}", None, 1 << 20, connect_timeout_s=1.0)
        other_ca, _, _ = make_certs(tmp_path / "other")
        with pytest.raises(ConnectionError, match="TLS certificate"):  # a CA that did not sign it
            StreamChannel(f"127.0.0.1:{srv.port}", other_ca.read_bytes(), 1 << 20, connect_timeout_s=1.0)
    finally:
        srv.stop(0)


def test_missing_tls_files_and_a_taken_port_are_clear_errors(tmp_path: Path, server: StreamServer) -> None:
    with pytest.raises(FileNotFoundError, match=r"stream.ssl_certfile="):
        StreamServer("127.0.0.1", 0, tls=TlsFiles(str(tmp_path / "no.pem"), "k", "c"))
    with pytest.raises(OSError, match=r"cannot listen on 127.0.0.1:.*stream.port"):
        StreamServer("127.0.0.1", server.port)


def test_tokens_are_per_round_and_per_node() -> None:
    secret = b"s" * 32
    tokens = {make_token(secret, r, n) for r in (1, 2) for n in (1, 2)}
    assert len(tokens) == 4 and all(len(t) == 32 for t in tokens)


def test_raw_grpc_with_an_empty_stream_is_harmless(server: StreamServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert list(channel.stream_stream(METHOD)(iter(()))) == []
    assert server.drain(0.2) == [] and server.refused == 0


def test_releasing_a_node_ends_its_stream_at_once_without_an_error_reply(server: StreamServer) -> None:
    """The strategy dropped the client (say, a malformed reply): the client must not wait out its timeout."""
    ch = _dial(server)
    ch.send(hello_frame(NODE, 1, server.token(NODE)))
    ch.send(encode_frame({"acts": [b"a"]}))
    _wait_reply(server)
    t0 = time.monotonic()
    server.close_stream(NODE)
    with pytest.raises(ConnectionError, match="closed the stream"):
        ch.recv(5.0)
    assert time.monotonic() - t0 < 2.0
    ch.close()
    assert server.drain(0.3) == [] and server.broken == 0
