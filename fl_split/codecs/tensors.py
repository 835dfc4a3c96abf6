"""Tensor lists (a module's weights, momenta, an update's dense tensors) as one ``none``-codec payload
per tensor: self-describing float32, so a receiver checks every count and shape against its own module
before loading. Nothing is pickled; sizes are ``len()`` of the payloads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fl_split.codecs.errors import CodecError
from fl_split.codecs.registry import create_codec

#: The ``none`` codec: float32 payloads for weights, momenta and mask gradients.
NONE_CODEC = create_codec("none")


def encode_tensors(tensors: Sequence[torch.Tensor | None]) -> list[bytes]:
    """One ``none``-codec payload per tensor (``b""`` for ``None``: e.g. a momentum buffer not created yet)."""
    return [b"" if t is None else NONE_CODEC.encode(t.detach().to(torch.float32)) for t in tensors]


def decode_tensors(
    payloads: Sequence[bytes], like: Sequence[torch.Tensor], what: str, *, allow_missing: bool = False
) -> list[torch.Tensor | None]:
    """Decode :func:`encode_tensors` output, checking count and shapes against ``like``.

    ``b""`` decodes to ``None`` when ``allow_missing`` (momentum not created yet); otherwise it is a
    ``CodecError`` (weights must all be sent).
    """
    if len(payloads) != len(like):
        raise CodecError(f"{what}: got {len(payloads)} tensors, the module has {len(like)}")
    out: list[torch.Tensor | None] = []
    for i, (payload, ref) in enumerate(zip(payloads, like, strict=True)):
        if not payload:
            if not allow_missing:
                raise CodecError(f"{what}: tensor {i} is missing; every tensor must be sent")
            out.append(None)
            continue
        t = NONE_CODEC.decode(payload, max_numel=max(ref.numel(), 1))
        if tuple(t.shape) != tuple(ref.shape):
            raise CodecError(f"{what}: tensor {i} has shape {tuple(t.shape)}, the module expects {tuple(ref.shape)}")
        out.append(t.to(device=ref.device, dtype=ref.dtype))
    return out


def decode_weights(payloads: Sequence[bytes], like: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
    """:func:`decode_tensors` for tensors that must all be present (a module's weights)."""
    return [t for t in decode_tensors(payloads, like, what) if t is not None]  # missing ones raised
