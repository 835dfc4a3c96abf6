"""The stream transport's frame format: exact round trips and a clear FrameError for every malformation."""

from __future__ import annotations

import struct

import pytest
import torch

from fl_split.sl.frames import MAGIC, FrameError, decode_frame, encode_frame

FIELDS = {
    "acts": [b"\x00\x01", b"", b"xyz" * 100],
    "labels": [b"L"],
    "done": False,
    "ok": True,
    "round": 7,
    "neg": -3,
    "node": (1 << 64) - 5,  # Flower node ids are unsigned 64-bit
    "t_client": 0.125,
    "config": '{"a": 1} é',
    "token": b"\xff" * 32,
    "empty": [],
}


def test_round_trip_every_type_exactly() -> None:
    frame = encode_frame(FIELDS)
    assert frame[:4] == MAGIC
    got = decode_frame(frame)
    assert got == FIELDS and list(got) == list(FIELDS)
    assert type(got["done"]) is bool and type(got["round"]) is int and type(got["t_client"]) is float
    # the layout is the documented one: 7 header bytes, then "acts" as a tag-5 list of 3 items
    assert struct.unpack_from("<4sBH", frame) == (MAGIC, 1, len(FIELDS))
    assert frame[7:13] == b"\x04acts\x05" and struct.unpack_from("<I", frame, 13) == (3,)


def test_frame_size_is_payloads_plus_documented_overhead() -> None:
    payloads = [b"a" * 1000, b"b" * 24]
    frame = encode_frame({"acts": payloads})
    # header 7 + name (1 + 4) + tag 1 + count 4 + 2 x (length 4)
    assert len(frame) == 1024 + 7 + 5 + 1 + 4 + 8


@pytest.mark.parametrize("cut", range(1, 60))
def test_every_truncation_is_a_frame_error(cut: int) -> None:
    frame = encode_frame({"acts": [b"abc", b"defg"], "round": 3, "t": 1.5, "s": "hi", "done": True})
    with pytest.raises(FrameError):
        decode_frame(frame[: len(frame) - cut] if cut < len(frame) else b"")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"XXXX\x01\x00\x00", "not a split-learning frame"),
        (MAGIC + b"\x02\x00\x00", "version 2"),
        (MAGIC + b"\x01" + struct.pack("<H", 65), "at most 64"),
        (encode_frame({"a": 1}) + b"\x00", "trailing"),
        (MAGIC + b"\x01\x01\x00" + b"\x01a\x09", "unknown type tag 9"),
        (MAGIC + b"\x01\x01\x00" + b"\x01a\x00\x02", "bool byte 2"),
        (MAGIC + b"\x01\x01\x00" + b"\x01a\x05" + struct.pack("<I", 1 << 30), "too short for their lengths"),
        (MAGIC + b"\x01\x01\x00" + b"\x01a\x04" + struct.pack("<I", 1 << 31), "needs 2147483648 bytes"),
        (MAGIC + b"\x01\x02\x00" + b"\x01a\x00\x01" + b"\x01a\x00\x01", "repeated name"),
        (MAGIC + b"\x01\x01\x00" + b"\x01\xff\x00\x01", "not UTF-8"),
        (b"FL", "shorter than its 7-byte header"),
    ],
)
def test_malformed_frames_say_what_is_wrong(data: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        decode_frame(data)


def test_encode_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(TypeError, match="cannot put a Tensor"):
        encode_frame({"acts": torch.zeros(3)})
    with pytest.raises(ValueError, match="does not fit 64 bits"):
        encode_frame({"n": 1 << 64})
    with pytest.raises(ValueError, match=r"1..255 bytes"):
        encode_frame({"": 1})
