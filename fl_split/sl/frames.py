"""The stream transport's frame: split-learning fields as one self-delimiting binary record, no pickle.

A frame carries the same fields a Flower message would (``acts``/``labels`` payload lists, ``grads``,
``done``, timings), so the bytes measured on either transport are the same codec payloads.

Layout (little-endian)::

    b"FLSF"  u8 version (1)  u16 field count
    per field:  u8 name length, name (UTF-8), u8 type tag, value
        tag 0 bool   u8 (0 or 1)
        tag 1 int    i64
        tag 6 int    u64 (integers >= 2**63: Flower's node ids)
        tag 2 float  f64
        tag 3 str    u32 length, UTF-8
        tag 4 bytes  u32 length, raw
        tag 5 list of bytes  u32 count, then per item u32 length, raw

Every length is checked against what is left before it is used; a frame must be consumed exactly.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from fl_split.codecs import CodecError

MAGIC = b"FLSF"
VERSION = 1
_HEAD = struct.Struct("<4sBH")
_U8, _U32, _I64, _F64 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<q"), struct.Struct("<d")
_U64 = struct.Struct("<Q")
_BOOL, _INT, _FLOAT, _STR, _BYTES, _LIST, _UINT = range(7)
#: Most fields a frame may declare (the protocol uses fewer than ten).
MAX_FIELDS = 64


class FrameError(CodecError):
    """A stream frame is malformed; the message says where."""


def encode_frame(fields: Mapping[str, Any]) -> bytes:
    """``fields`` (bool, int, float, str, bytes, or lists of bytes) as one frame.

    Raises
    ------
    TypeError
        For a value of another type (say, a tensor: encode it with a codec first).
    """
    if len(fields) > MAX_FIELDS:
        raise ValueError(f"a frame holds at most {MAX_FIELDS} fields, got {len(fields)}")
    parts = [_HEAD.pack(MAGIC, VERSION, len(fields))]
    for name, value in fields.items():
        key = name.encode()
        if not 0 < len(key) < 256:
            raise ValueError(f"field name {name!r} must be 1..255 bytes of UTF-8")
        parts += [_U8.pack(len(key)), key]
        if isinstance(value, bool):
            parts += [_U8.pack(_BOOL), _U8.pack(int(value))]
        elif isinstance(value, int):
            if not -(1 << 63) <= value < 1 << 64:
                raise ValueError(f"field {name!r}: integer {value} does not fit 64 bits")
            parts += [_U8.pack(_INT), _I64.pack(value)] if value < 1 << 63 else [_U8.pack(_UINT), _U64.pack(value)]
        elif isinstance(value, float):
            parts += [_U8.pack(_FLOAT), _F64.pack(value)]
        elif isinstance(value, str):
            raw = value.encode()
            parts += [_U8.pack(_STR), _U32.pack(len(raw)), raw]
        elif isinstance(value, bytes | bytearray):
            parts += [_U8.pack(_BYTES), _U32.pack(len(value)), bytes(value)]
        elif isinstance(value, list) and all(isinstance(v, bytes | bytearray) for v in value):
            parts += [_U8.pack(_LIST), _U32.pack(len(value))]
            for item in value:
                parts += [_U32.pack(len(item)), bytes(item)]
        else:
            raise TypeError(f"field {name!r}: cannot put a {type(value).__name__} in a frame")
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.view, self.pos = memoryview(data), 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.view) - self.pos:
            raise FrameError(
                f"{what} needs {n} bytes at offset {self.pos}; the frame has {len(self.view) - self.pos} left"
            )
        out = bytes(self.view[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, what: str) -> Any:
        return st.unpack(self.take(st.size, what))[0]


def decode_frame(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_frame`; :class:`FrameError` for anything malformed."""
    if len(data) < _HEAD.size:
        raise FrameError(f"a frame of {len(data)} bytes is shorter than its {_HEAD.size}-byte header")
    magic, version, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"not a split-learning frame (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise FrameError(f"frame version {version}; this build reads version {VERSION}")
    if count > MAX_FIELDS:
        raise FrameError(f"frame declares {count} fields; at most {MAX_FIELDS} are allowed")
    r = _Reader(data)
    r.pos = _HEAD.size
    out: dict[str, Any] = {}
    for i in range(count):
        name_len = r.unpack(_U8, f"field {i}'s name length")
        try:
            name = r.take(name_len, f"field {i}'s name").decode()
        except UnicodeDecodeError:
            raise FrameError(f"field {i}'s name is not UTF-8") from None
        if not name or name in out:
            raise FrameError(f"field {i} has an empty or repeated name {name!r}")
        tag = r.unpack(_U8, f"field {name!r}'s type")
        if tag == _BOOL:
            flag = r.unpack(_U8, name)
            if flag > 1:
                raise FrameError(f"field {name!r}: bool byte {flag}")
            out[name] = bool(flag)
        elif tag == _INT:
            out[name] = r.unpack(_I64, name)
        elif tag == _UINT:
            out[name] = r.unpack(_U64, name)
        elif tag == _FLOAT:
            out[name] = r.unpack(_F64, name)
        elif tag == _STR:
            try:
                out[name] = r.take(r.unpack(_U32, name), name).decode()
            except UnicodeDecodeError:
                raise FrameError(f"field {name!r} is not UTF-8") from None
        elif tag == _BYTES:
            out[name] = r.take(r.unpack(_U32, name), name)
        elif tag == _LIST:
            n = r.unpack(_U32, name)
            if n * _U32.size > len(data) - r.pos:
                raise FrameError(f"field {name!r} declares {n} items; the frame is too short for their lengths")
            out[name] = [r.take(r.unpack(_U32, name), f"{name}[{j}]") for j in range(n)]
        else:
            raise FrameError(f"field {name!r} has unknown type tag {tag}")
    if r.pos != len(data):
        raise FrameError(f"{len(data) - r.pos} trailing bytes after the frame's {count} fields")
    return out
