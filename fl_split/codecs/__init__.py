"""Codecs: tensor -> self-describing bytes -> tensor, one contract for every transport.

>>> from fl_split.codecs import create_codec
>>> codec = create_codec("ms", keep=0.01, bits=2)
>>> payload = codec.encode(x)          # bytes; len(payload) is the only size anyone reports
>>> x_hat = codec.decode(payload)      # same shape and dtype as x
"""

from __future__ import annotations

import torch

# Importing the family modules registers their codecs.
from fl_split.codecs import bird, dense, dither, lowrank, ms, quantizers, sparsifiers  # noqa: F401
from fl_split.codecs.base import Codec, InputStats
from fl_split.codecs.error_feedback import ErrorFeedback
from fl_split.codecs.errors import CodecError
from fl_split.codecs.registry import (
    codec_class,
    codec_class_by_id,
    codec_parameters,
    create_codec,
    list_codecs,
    register_codec,
)
from fl_split.codecs.spec import codec_from_spec, parse_codec_spec, seeded_codec_from_spec
from fl_split.codecs.wire import MAX_NUMEL, peek_codec_id

__all__ = [
    "Codec",
    "CodecError",
    "ErrorFeedback",
    "InputStats",
    "codec_class",
    "codec_from_spec",
    "codec_parameters",
    "create_codec",
    "decode_payload",
    "list_codecs",
    "parse_codec_spec",
    "register_codec",
    "seeded_codec_from_spec",
]

_DEFAULT_DECODERS: dict[int, Codec] = {}


def decode_payload(
    payload: bytes | bytearray | memoryview,
    device: torch.device | str | None = None,
    *,
    max_numel: int = MAX_NUMEL,
) -> torch.Tensor:
    """Decode any fl-split payload, choosing the codec from its header.

    Every payload carries the parameters needed to decode it, so a default-constructed instance
    of the right codec decodes payloads made with any parameters.
    """
    cid = peek_codec_id(payload)
    codec = _DEFAULT_DECODERS.get(cid)
    if codec is None:
        codec = _DEFAULT_DECODERS.setdefault(cid, codec_class_by_id(cid)())
    return codec.decode(payload, device, max_numel=max_numel)
