"""Several tensors in one payload: ``u32 n | n x u32 length | n codec payloads`` (little-endian).

Used where one message carries a vector made of tensors that a shape-aware codec should see in
their own shapes: a DDP gradient bucket, a model's parameters in gossip.
"""

from __future__ import annotations

import math
import struct

import torch

from fl_split.codecs.base import Codec
from fl_split.codecs.errors import CodecError

#: The payload starts with the number of parts (u32), then one u32 length per part.
_COUNT = struct.Struct("<I")


def encode_parts(codec: Codec, x: torch.Tensor, shapes: list[torch.Size] | None) -> bytes:
    """The payload of a flat vector: the codec's payload of ``x`` as is (``shapes`` None), or the
    framing ``u32 n | n x u32 length | n codec payloads`` of ``x`` cut into tensors of ``shapes`` (in order).

    Parameters
    ----------
    codec:
        The codec of every part.
    x:
        A 1-D tensor (a DDP bucket, a model's parameters as one vector).
    shapes:
        Shapes whose sizes add up to ``x.numel()``, or ``None``.
    """
    if shapes is None:
        return codec.encode(x)
    parts = [codec.encode(t.view(sh)) for t, sh in zip(x.split([math.prod(sh) for sh in shapes]), shapes, strict=True)]
    head = _COUNT.pack(len(parts)) + struct.pack(f"<{len(parts)}I", *(len(p) for p in parts))
    return head + b"".join(parts)


def decode_parts(
    codec: Codec, payload: bytes, numel: int, shapes: list[torch.Size] | None, device: torch.device
) -> torch.Tensor:
    """Inverse of :func:`encode_parts`: the flat vector of ``numel`` values, on ``device``.

    Raises
    ------
    CodecError
        A payload that does not decode, or does not hold exactly the expected tensors.
    """
    if shapes is None:
        flat = codec.decode(payload, device=device, max_numel=numel)
        if flat.numel() != numel:
            raise CodecError(f"holds {flat.numel()} values, expected {numel}")
        return flat.reshape(-1)
    n = len(shapes)
    if len(payload) < _COUNT.size or _COUNT.unpack_from(payload)[0] != n:
        raise CodecError(f"per-tensor payload does not start with the expected tensor count {n}")
    start = _COUNT.size + 4 * n
    if len(payload) < start:
        raise CodecError(f"per-tensor payload of {len(payload)} bytes is shorter than its {start}-byte table")
    lengths = struct.unpack_from(f"<{n}I", payload, _COUNT.size)
    if start + sum(lengths) != len(payload):
        raise CodecError(f"per-tensor lengths add up to {start + sum(lengths)} bytes, the payload has {len(payload)}")
    out = []
    for i, (length, shape) in enumerate(zip(lengths, shapes, strict=True)):
        t = codec.decode(payload[start : start + length], device=device, max_numel=math.prod(shape))
        if t.shape != shape:
            raise CodecError(f"tensor {i} decodes to shape {tuple(t.shape)}, expected {tuple(shape)}")
        out.append(t.reshape(-1))
        start += length
    return torch.cat(out)
