"""What split-learning messages carry, as bytes: labels, tensor lists (weights, momenta), field names.

Every payload is produced here or by a codec and measured with ``len()``; nothing is pickled.
Tensor lists use the ``none`` codec per tensor (self-describing float32 payloads), so the receiver
checks every shape against its own module before loading.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import torch

from fl_split.codecs import CodecError, create_codec

#: Field names, grouped by what they count as in the metrics.
ACTIVATIONS, LABELS, GRADIENTS, WEIGHTS, MOMENTUM = "acts", "labels", "grads", "weights", "momentum"
#: ``sl_begin``: what the client returns when done (a list of field names); the done reply's partition id.
RETURNS, PARTITION = "returns", "partition"
#: Field → metrics category (``activation``, ``label``, ``gradient``, ``model``).
CATEGORY = {ACTIVATIONS: "activation", LABELS: "label", GRADIENTS: "gradient", WEIGHTS: "model", MOMENTUM: "model"}

_LABEL_MAGIC = b"FLL"
_LABEL_HEADER = struct.Struct("<3sBI")  # magic, bytes per label (1, 2 or 4), count
_WIDTH_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
#: The ``none`` codec: float32 payloads for weights, momenta and mask gradients.
NONE_CODEC = create_codec("none")

Fields = Mapping[str, object]


def encode_labels(labels: torch.Tensor, num_classes: int) -> bytes:
    """Class labels as the narrowest little-endian integers that hold ``num_classes`` (1, 2 or 4 bytes each)."""
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    width = 1 if num_classes <= 256 else 2 if num_classes <= 32768 else 4
    raw = labels.to(device="cpu", dtype=_WIDTH_DTYPE[width]).contiguous().numpy().tobytes()
    return _LABEL_HEADER.pack(_LABEL_MAGIC, width, labels.numel()) + raw


def decode_labels(payload: bytes, num_classes: int, count: int | None = None) -> torch.Tensor:
    """Inverse of :func:`encode_labels`; ``CodecError`` unless the payload is well formed and in range."""
    if len(payload) < _LABEL_HEADER.size:
        raise CodecError(f"label payload of {len(payload)} bytes is shorter than its {_LABEL_HEADER.size}-byte header")
    magic, width, n = _LABEL_HEADER.unpack_from(payload)
    if magic != _LABEL_MAGIC or width not in _WIDTH_DTYPE:
        raise CodecError("label payload has a bad magic or label width")
    if len(payload) != _LABEL_HEADER.size + width * n:
        raise CodecError(f"label payload declares {n} labels of {width} B but holds {len(payload)} bytes")
    if count is not None and n != count:
        raise CodecError(f"label payload holds {n} labels for a batch of {count}")
    y = torch.frombuffer(bytearray(payload[_LABEL_HEADER.size :]), dtype=_WIDTH_DTYPE[width]).to(torch.int64)
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise CodecError(f"label payload holds labels outside [0, {num_classes})")
    return y


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


def encode_masked(values: torch.Tensor, support: torch.Tensor) -> bytes:
    """The ``mask`` downlink: ``values`` only where ``support`` is True, row-major, no indices."""
    return NONE_CODEC.encode(values[support].to(torch.float32))


def decode_masked(payload: bytes, support: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_masked`: zeros off ``support``; ``CodecError`` on a count mismatch."""
    count = int(support.sum())
    values = NONE_CODEC.decode(payload, max_numel=max(count, 1))
    if values.ndim != 1 or values.numel() != count:
        raise CodecError(f"mask gradient holds {values.numel()} values for {count} kept positions")
    out = torch.zeros(support.shape)
    out[support] = values
    return out


def decode_weights(payloads: Sequence[bytes], like: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
    """:func:`decode_tensors` for tensors that must all be present (a module's weights)."""
    return [t for t in decode_tensors(payloads, like, what) if t is not None]  # missing ones raised


def field_nbytes(fields: Fields) -> dict[str, int]:
    """Measured bytes per metrics category: ``len()`` of every bytes value (or list of them) in ``fields``."""
    out: dict[str, int] = {}
    for key, value in fields.items():
        if isinstance(value, bytes | bytearray):
            n = len(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes | bytearray):
            n = sum(len(v) for v in value)
        else:
            continue
        cat = CATEGORY.get(key, "other")
        out[cat] = out.get(cat, 0) + n
    return out
