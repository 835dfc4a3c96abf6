"""The common payload header and a bounds-checked reader for payload bodies.

Layout (all integers little-endian; see ``docs/wire-format.md``)::

    offset  size      field
    0       4         magic  b"FLSC"
    4       1         format version (currently 1)
    5       1         codec id (see the registry)
    6       1         dtype code of the original tensor (0 f32, 1 f16, 2 bf16, 3 f64)
    7       1         ndim (0..8)
    8       4*ndim    shape, one u32 per dimension
    ...     P         codec parameter block (fixed size per codec, ``Codec.param_format``)
    ...               body (codec-specific buffers, each padded to a byte boundary)

Nothing in a header is trusted before it is checked: the shape's element count is bounded by
:data:`MAX_NUMEL` (or the caller's ``max_numel``), and every body read goes through
:class:`PayloadReader`, which refuses to read past the end of the payload.
"""

from __future__ import annotations

import struct
import sys
import warnings
from dataclasses import dataclass
from math import prod
from typing import Any

import torch

from fl_split.codecs.errors import CodecError

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("fl_split.codecs assumes a little-endian host (tensor views are reinterpreted)")

MAGIC = b"FLSC"
FORMAT_VERSION = 1
MAX_NDIM = 8
#: Largest element count a decoder will allocate by default (2**31 - 1, torch's int32 index limit).
MAX_NUMEL = 2**31 - 1

_FIXED = struct.Struct("<4sBBBB")

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
}
DTYPES_BY_CODE: dict[int, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}


@dataclass(frozen=True)
class Header:
    """The decoded common header of a payload.

    Attributes
    ----------
    codec_id:
        Registry id of the codec that produced the payload.
    dtype:
        dtype of the tensor that was encoded (and that decode returns).
    shape:
        Shape of the encoded tensor.
    params:
        The codec's parameter block, unpacked with its ``param_format``.
    body_offset:
        Byte offset of the body inside the payload.
    """

    codec_id: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    params: tuple[Any, ...]
    body_offset: int

    @property
    def numel(self) -> int:
        """Number of elements of the encoded tensor."""
        return prod(self.shape)


def header_nbytes(ndim: int, param_nbytes: int) -> int:
    """Size in bytes of the common header for a tensor of ``ndim`` dimensions."""
    return _FIXED.size + 4 * ndim + param_nbytes


def pack_header(
    codec_id: int, dtype: torch.dtype, shape: tuple[int, ...], param_struct: struct.Struct, params: tuple
) -> bytes:
    """Serialize the common header followed by the codec parameter block."""
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, codec_id, DTYPE_CODES[dtype], len(shape))
    return fixed + struct.pack(f"<{len(shape)}I", *shape) + param_struct.pack(*params)


def peek_codec_id(payload: bytes | bytearray | memoryview) -> int:
    """Return the codec id of a payload after checking its magic and version."""
    _check_fixed(payload)
    return int(payload[5])


def _check_fixed(payload: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"a payload must be bytes, got {type(payload).__name__}")
    if len(payload) < _FIXED.size:
        raise CodecError(f"payload truncated: {len(payload)} bytes, shorter than the {_FIXED.size}-byte header")
    magic, version, codec_id, dtype_code, ndim = _FIXED.unpack_from(payload, 0)
    if magic != MAGIC:
        raise CodecError(f"not an fl-split payload: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise CodecError(
            f"payload has wire-format version {version}; this fl-split reads version {FORMAT_VERSION}"
            " (encode and decode with the same fl-split release)"
        )
    return codec_id, dtype_code, ndim, version


def unpack_header(
    payload: bytes | bytearray | memoryview,
    expected_codec_id: int,
    codec_name: str,
    param_struct: struct.Struct,
    max_numel: int = MAX_NUMEL,
) -> Header:
    """Parse and validate the common header of ``payload``.

    Raises
    ------
    CodecError
        If the payload is not bytes, is truncated, has the wrong magic, version or codec id, an
        unknown dtype code, too many dimensions, or a shape whose element count (or, for an empty
        tensor, the product of its non-zero dimensions) exceeds ``max_numel``.
    """
    codec_id, dtype_code, ndim, _ = _check_fixed(payload)
    if codec_id != expected_codec_id:
        raise CodecError(
            f"payload was made by codec id {codec_id}, but codec {codec_name!r} (id {expected_codec_id}) "
            "was asked to decode it; use fl_split.codecs.decode_payload() to dispatch on the header"
        )
    if dtype_code not in DTYPES_BY_CODE:
        raise CodecError(f"payload has unknown dtype code {dtype_code} (known: {sorted(DTYPES_BY_CODE)})")
    if ndim > MAX_NDIM:
        raise CodecError(f"payload declares {ndim} dimensions; at most {MAX_NDIM} are supported")
    need = header_nbytes(ndim, param_struct.size)
    if len(payload) < need:
        raise CodecError(f"payload truncated inside the header: {len(payload)} bytes, header needs {need}")
    shape = struct.unpack_from(f"<{ndim}I", payload, _FIXED.size)
    numel = prod(shape)
    # an empty tensor's other dimensions still size its strides: (0, 2**31, 2**31) has no element, yet
    # torch.empty overflows on it, so the non-zero dimensions are held to the limit too
    extent = prod(d for d in shape if d)
    if extent > max_numel:
        what = f"{numel} elements" if numel else f"no elements, but non-zero dimensions multiplying to {extent}"
        raise CodecError(
            f"payload declares shape {tuple(shape)} ({what}), above the decoder's limit of "
            f"{max_numel}; raise max_numel only for payloads from a trusted sender"
        )
    params = param_struct.unpack_from(payload, _FIXED.size + 4 * ndim)
    return Header(codec_id, DTYPES_BY_CODE[dtype_code], tuple(shape), params, need)


class PayloadReader:
    """Sequential, bounds-checked reads from a payload body.

    Every read checks the remaining length first, so a corrupted count can never make the
    decoder read past the payload or allocate more than the payload could describe.
    """

    def __init__(self, payload: bytes | bytearray | memoryview, offset: int, codec_name: str) -> None:
        self._view = memoryview(payload).cast("B")
        self._pos = offset
        self._name = codec_name

    @property
    def remaining(self) -> int:
        """Bytes not yet read."""
        return len(self._view) - self._pos

    def error(self, message: str) -> CodecError:
        """Build a :class:`CodecError` prefixed with the codec name."""
        return CodecError(f"codec {self._name!r}: {message}")

    def take(self, nbytes: int, what: str) -> memoryview:
        """Return the next ``nbytes`` bytes (a view, no copy)."""
        if nbytes < 0 or nbytes > self.remaining:
            raise self.error(f"payload truncated: {what} needs {nbytes} bytes, only {self.remaining} remain")
        out = self._view[self._pos : self._pos + nbytes]
        self._pos += nbytes
        return out

    def take_struct(self, fmt: str, what: str) -> tuple:
        """Unpack the next ``struct`` record with format ``fmt`` (little-endian is implied)."""
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))

    def take_tensor(self, count: int, dtype: torch.dtype, what: str, device: torch.device | str | None) -> torch.Tensor:
        """Read ``count`` elements of ``dtype`` into a new tensor on ``device``."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        raw = self.take(count * itemsize, what)
        if count == 0:
            return torch.empty(0, dtype=dtype, device=device)
        with warnings.catch_warnings():
            # The payload is read-only; the tensor is copied (``.to``/``.clone``) before anyone writes.
            warnings.simplefilter("ignore", UserWarning)
            t = torch.frombuffer(raw, dtype=torch.uint8)
        t = t.to(device=device, copy=True) if device is not None else t.clone()
        return t.view(dtype)

    def finish(self) -> None:
        """Raise if bytes are left over after the body was read."""
        if self.remaining:
            raise self.error(f"payload has {self.remaining} unexpected trailing bytes (corrupted or wrong length)")
