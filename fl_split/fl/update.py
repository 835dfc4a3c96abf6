"""A client's model update as codec payloads: the one place updates are compressed and decompressed.

An update is an ordered mapping ``name -> delta tensor`` (the local model minus the global one).
Each tensor becomes one payload: tensors with fewer than ``dense_below`` elements go through the
``none`` codec (float32), the rest through the uplink codec, optionally with error feedback (one
residual per tensor, passed in and returned so the caller keeps it where it lives: a Flower
``context.state``). Sizes are the payloads' ``len()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_split.codecs import Codec, CodecError, ErrorFeedback, codec_from_spec
from fl_split.codecs.tensors import NONE_CODEC, encode_tensors

#: Keys of the ConfigRecords: an encoded update (uplink), an encoded change of the global model
#: (downlink), a client's error-feedback residual and its copy of the global model (``context.state``).
UPDATE_RECORD = "fl_split.fl.update"
DOWN_RECORD = "fl_split.fl.down"
RESIDUAL_RECORD = "fl_split.fl.residual"
VIEW_RECORD = "fl_split.fl.view"


def encode_update(
    deltas: Mapping[str, torch.Tensor],
    spec: str,
    *,
    dense_below: int = 0,
    residuals: dict[str, torch.Tensor] | None = None,
) -> tuple[list[str], list[bytes], dict[str, torch.Tensor] | None]:
    """``(names, payloads, residuals)``: one payload per tensor, in ``deltas``' order.

    Parameters
    ----------
    deltas:
        The update, tensor by tensor.
    spec:
        Uplink codec spec (``"ms:keep=0.01,bits=2,signed=true"``).
    dense_below:
        Tensors with fewer elements are sent with the ``none`` codec (and get no residual).
    residuals:
        Error feedback: the residual per tensor name from the last update (``{}`` on the first);
        ``None`` turns error feedback off. The updated residuals are returned.
    """
    codec = codec_from_spec(spec)
    ef = ErrorFeedback(codec) if residuals is not None else None
    if ef is not None and residuals:
        for name, r in residuals.items():
            ef.set_residual(name, r)
    names, payloads = [], []
    for name, delta in deltas.items():
        names.append(name)
        if delta.numel() < dense_below:
            payloads.append(NONE_CODEC.encode(delta.float()))
        elif ef is not None:
            payloads.append(ef.encode(delta, name))
        else:
            payloads.append(codec.encode(delta))
    if ef is None:
        return names, payloads, None
    kept: dict[str, torch.Tensor] = {}
    for n in names:
        residual = ef.residual(n)
        if residual is not None:
            kept[n] = residual
    return names, payloads, kept


def decode_update(
    names: list[str], payloads: list[bytes], like: Mapping[str, torch.Tensor], spec: str, *, dense_below: int = 0
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_update`, checked against the model's tensors ``like``.

    Raises
    ------
    CodecError
        If names, count, a payload, a shape or a value (non-finite) is not what the model expects.
    """
    if list(names) != list(like):
        raise CodecError(f"update names {list(names)[:4]}... do not match the model's {list(like)[:4]}...")
    if len(payloads) != len(names):
        raise CodecError(f"{len(payloads)} payloads for {len(names)} tensors")
    codec: Codec = codec_from_spec(spec)
    out: dict[str, torch.Tensor] = {}
    for name, payload in zip(names, payloads, strict=True):
        ref = like[name]
        dec = NONE_CODEC if ref.numel() < dense_below else codec
        t = dec.decode(bytes(payload), max_numel=max(ref.numel(), 1))
        if tuple(t.shape) != tuple(ref.shape):
            raise CodecError(f"update tensor {name!r} has shape {tuple(t.shape)}, the model expects {tuple(ref.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise CodecError(f"update tensor {name!r} holds non-finite values")
        out[name] = t.to(ref.dtype)
    return out


def residuals_to_record(residuals: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Residuals as ConfigRecord fields (names, float32 ``none`` payloads); their size is the EF memory."""
    names = list(residuals)
    return {"names": names, "payloads": encode_tensors([residuals[n] for n in names])}


def residuals_from_record(fields: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`residuals_to_record`."""
    names, payloads = list(fields.get("names", [])), list(fields.get("payloads", []))
    return {n: NONE_CODEC.decode(bytes(p)) for n, p in zip(names, payloads, strict=True)}
