"""What split-learning messages carry, as bytes: labels, tensor lists (weights, momenta), field names.

Every payload is produced here or by a codec and measured with ``len()``; nothing is pickled.
Tensor lists use the ``none`` codec per tensor (self-describing float32 payloads), so the receiver
checks every shape against its own module before loading.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import torch

from fl_split.codecs import CodecError
from fl_split.codecs import tensors as _tensors

# moved to fl_split.codecs.tensors (FL's updates use them too); importable from here as before
NONE_CODEC = _tensors.NONE_CODEC
encode_tensors = _tensors.encode_tensors
decode_tensors = _tensors.decode_tensors
decode_weights = _tensors.decode_weights

#: Field names, grouped by what they count as in the metrics.
ACTIVATIONS, LABELS, GRADIENTS, WEIGHTS, MOMENTUM = "acts", "labels", "grads", "weights", "momentum"
#: ``sl_begin``: what the client returns when done (a list of field names); the done reply's partition id.
RETURNS, PARTITION = "returns", "partition"
#: Field → metrics category (``activation``, ``label``, ``gradient``, ``model``).
CATEGORY = {ACTIVATIONS: "activation", LABELS: "label", GRADIENTS: "gradient", WEIGHTS: "model", MOMENTUM: "model"}

_LABEL_MAGIC = b"FLL"
_LABEL_HEADER = struct.Struct("<3sBI")  # magic, bytes per label (1, 2 or 4), count
_WIDTH_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32}

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


def encode_masked(values: torch.Tensor, support: torch.Tensor) -> bytes:
    """The ``mask`` downlink: ``values`` only where ``support`` is True, row-major, no indices."""
    return NONE_CODEC.encode(values[support].to(torch.float32))


def decode_masked(payload: bytes, support: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_masked`: zeros off ``support``; ``CodecError`` on a count mismatch."""
    count = int(support.sum())
    values = NONE_CODEC.decode(payload, max_numel=max(count, 1))
    if values.ndim != 1 or values.numel() != count:
        raise CodecError(f"mask gradient holds {values.numel()} values for {count} kept positions")
    out = torch.zeros(support.shape, dtype=torch.float32, device=support.device)
    out[support] = values.to(support.device)
    return out


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
