"""The codec contract: ``encode(tensor) -> bytes`` and ``decode(bytes) -> tensor``.

Every codec is a subclass of :class:`Codec` that implements three hooks:

* ``_encode(flat, stats) -> (params, chunks)``: ``flat`` is the input as a contiguous 1-D float32
  tensor on the caller's device, already checked for NaN/Inf; ``params`` fills the codec's fixed
  parameter block (``param_format``); ``chunks`` are the body buffers in order (bytes or tensors,
  each becomes its raw little-endian bytes).
* ``_decode(reader, header, device) -> flat``: rebuild the 1-D float32 tensor; every read goes
  through the bounds-checked :class:`~fl_split.codecs.wire.PayloadReader`.
* ``expected_bits(numel)``: the body size in bits, including the padding of each buffer to a byte
  boundary. Codecs whose size depends on the data (``fixed_size = False``) return an upper bound
  and override :meth:`Codec.analytic_bits` to give the exact formula from the payload's own counts.

The base class owns everything common: input checks (dtype, NaN/Inf, shape limits), the header,
empty tensors, dtype/shape/device restoration, and the final length check.
"""

from __future__ import annotations

import numbers
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from fl_split.codecs.errors import CodecError
from fl_split.codecs.wire import (
    DTYPE_CODES,
    MAX_NDIM,
    MAX_NUMEL,
    Header,
    PayloadReader,
    header_nbytes,
    pack_header,
    unpack_header,
)

Chunk = bytes | torch.Tensor

#: Largest finite input magnitude a codec accepts (2**64, about 1.8e19). Scales, norms and
#: means are float32 on the wire; beyond this they could overflow (a norm squares its inputs).
MAX_ABS_INPUT = float(2**64)
NonFinitePolicy = Literal["raise", "zero"]


@dataclass(frozen=True)
class InputStats:
    """Statistics of the (finite) input computed once by the base class.

    Attributes
    ----------
    min, max:
        Smallest and largest element, as Python floats.
    shape:
        Shape of the tensor being encoded (``_encode`` sees it flattened).
    """

    min: float
    max: float
    shape: tuple[int, ...] = ()


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` holds (parameter validation)."""
    if not condition:
        raise ValueError(message)


def is_int(value: object) -> bool:
    """True for Python/NumPy integers, False for bool (``True`` is not a bit width)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for real numbers, False for bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def resolve_seed(seed: int | None) -> int:
    """A concrete 63-bit seed: ``seed`` itself, or one drawn from torch's global RNG when ``None``.

    Drawing from the global RNG makes ``torch.manual_seed(...)`` reproduce codecs created without
    an explicit seed.
    """
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    require(is_int(seed) and 0 <= seed < 2**63, f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


class Codec(ABC):
    """Base class of all codecs. Subclasses are registered with ``@register_codec``.

    Parameters
    ----------
    nonfinite:
        ``"raise"`` (default): an input holding NaN or Inf raises ``ValueError`` with the count.
        ``"zero"``: such values are replaced by 0 before encoding.
    """

    #: Name used by configs, the CLI and :func:`create_codec`.
    name: ClassVar[str]
    #: One-byte id written in every payload header.
    codec_id: ClassVar[int]
    #: ``struct`` format (little-endian implied) of the codec's fixed parameter block.
    param_format: ClassVar[str] = ""
    #: Whether the body size depends only on the element count and the codec's parameters.
    fixed_size: ClassVar[bool] = True
    #: Whether the encoding uses the tensor's shape, not only its flattening (low rank, row blocks):
    #: the DDP hook then encodes each parameter's gradient with its own shape instead of the flat bucket.
    shape_aware: ClassVar[bool] = False

    def __init__(self, *, nonfinite: NonFinitePolicy = "raise") -> None:
        require(nonfinite in ("raise", "zero"), f"nonfinite must be 'raise' or 'zero', got {nonfinite!r}")
        self.nonfinite: NonFinitePolicy = nonfinite
        self._param_struct = struct.Struct("<" + self.param_format)

    # ----------------------------------------------------------------- public API
    def encode(self, x: torch.Tensor) -> bytes:
        """Encode ``x`` (any shape; float32/16/bf16/64; CPU or CUDA) into self-describing bytes."""
        flat, stats = self._prepare(x)
        chunks: list[Chunk]
        if flat.numel() == 0:
            params, chunks = self._empty_params(), []
        else:
            params, chunks = self._encode(flat, stats)
        header = pack_header(self.codec_id, x.dtype, tuple(x.shape), self._param_struct, tuple(params))
        return header + _join(chunks)

    def decode(
        self,
        payload: bytes | bytearray | memoryview,
        device: torch.device | str | None = None,
        *,
        max_numel: int = MAX_NUMEL,
    ) -> torch.Tensor:
        """Decode a payload made by this codec into a tensor of the original shape and dtype.

        Parameters
        ----------
        payload:
            Bytes produced by :meth:`encode` (of any instance of this codec).
        device:
            Where to build the result (default: CPU). Packed buffers are moved there first and
            unpacked on the device.
        max_numel:
            Refuse headers declaring more elements than this (protects against allocation bombs).

        Raises
        ------
        CodecError
            If the payload is truncated, corrupted or was made by another codec.
        """
        header = unpack_header(payload, self.codec_id, self.name, self._param_struct, max_numel)
        device = torch.device(device) if device is not None else torch.device("cpu")
        reader = PayloadReader(payload, header.body_offset, self.name)
        if header.numel == 0:
            reader.finish()
            return torch.empty(header.shape, dtype=header.dtype, device=device)
        flat = self._decode(reader, header, device)
        reader.finish()
        if flat.numel() != header.numel:  # pragma: no cover - guards codec bugs
            raise CodecError(f"codec {self.name!r} decoded {flat.numel()} elements, header says {header.numel}")
        return flat.reshape(header.shape).to(header.dtype)

    def support(
        self, payload: bytes | bytearray | memoryview, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Boolean mask, in the tensor's shape, of the positions whose values ``payload`` sends exactly.

        Sparse codecs return their kept positions (MS: the sentinel positions), read from the payload
        without a second top-k, so a receiver can send a gradient back only there (the ``mask``
        downlink: no indices needed, both sides know them). Dense and quantizing codecs send every
        element: all True.
        """
        header = unpack_header(payload, self.codec_id, self.name, self._param_struct)
        device = torch.device(device) if device is not None else torch.device("cpu")
        if header.numel == 0:
            return torch.zeros(header.shape, dtype=torch.bool, device=device)
        mask = self._support(PayloadReader(payload, header.body_offset, self.name), header, device)
        if mask is None:
            return torch.ones(header.shape, dtype=torch.bool, device=device)
        return mask.reshape(header.shape)

    def header_nbytes(self, ndim: int) -> int:
        """Size in bytes of the header (common part + this codec's parameter block)."""
        return header_nbytes(ndim, self._param_struct.size)

    @abstractmethod
    def expected_bits(self, numel: int) -> int:
        """Body size in bits for a tensor of ``numel`` elements (an upper bound if not ``fixed_size``)."""

    def analytic_bits(self, payload: bytes) -> int:
        """Body size in bits predicted by this codec's size formula for ``payload``.

        For fixed-size codecs this is ``expected_bits(numel)``; data-dependent codecs read their
        counts from the payload. ``len(payload) == header_nbytes(ndim) + ceil(analytic_bits / 8)``.
        """
        header = unpack_header(payload, self.codec_id, self.name, self._param_struct)
        return self.expected_bits(header.numel) if header.numel else 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def config(self) -> dict[str, object]:
        """The constructor parameters of this instance (for logs and metrics)."""
        from fl_split.codecs.registry import codec_parameters

        return {p: getattr(self, p) for p in codec_parameters(self.name) if hasattr(self, p)}

    # ----------------------------------------------------------------- hooks
    @abstractmethod
    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list[Chunk]]:
        """Encode a non-empty, finite, contiguous 1-D float32 tensor."""

    @abstractmethod
    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        """Decode the body into a 1-D float tensor of ``header.numel`` elements on ``device``."""

    def _support(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor | None:
        """Flat boolean mask of the exactly-sent positions, or ``None`` for every position."""
        return None

    def _empty_params(self) -> tuple:
        """Parameter block written for an empty tensor (all zeros)."""
        return tuple(b"" if c.endswith("s") else 0 for c in _struct_fields(self.param_format))

    # ----------------------------------------------------------------- input checks
    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, InputStats]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"codec {self.name!r} encodes torch.Tensor, got {type(x).__name__}")
        if x.dtype not in DTYPE_CODES:
            raise TypeError(
                f"codec {self.name!r} encodes floating-point tensors (float32, float16, bfloat16, float64); "
                f"got {x.dtype}. Convert first, e.g. x.float()"
            )
        if x.ndim > MAX_NDIM:
            raise ValueError(f"codec {self.name!r}: tensors of at most {MAX_NDIM} dimensions, got {x.ndim}")
        if x.numel() > MAX_NUMEL:
            raise ValueError(f"codec {self.name!r}: at most {MAX_NUMEL} elements per tensor, got {x.numel()}")
        flat = x.detach().reshape(-1)
        shape = tuple(x.shape)
        if flat.numel() == 0:
            return flat.float(), InputStats(0.0, 0.0, shape)
        if flat.dtype == torch.float64:  # check the range before the cast turns big values into inf
            self._check_range(*torch.stack(list(torch.aminmax(flat.nan_to_num(0.0, 0.0, 0.0)))).tolist())
        if flat.dtype != torch.float32:
            flat = flat.float()
        flat = flat.contiguous()
        lo, hi = torch.aminmax(flat)  # NaN propagates; +-Inf shows up as an extreme
        lo_f, hi_f = torch.stack([lo, hi]).tolist()
        if not (_finite(lo_f) and _finite(hi_f)):
            bad = ~torch.isfinite(flat)
            n_nan = int(torch.isnan(flat).sum())
            n_bad = int(bad.sum())
            if n_bad == 0:  # pragma: no cover - aminmax and isfinite disagree only on exotic hardware
                return flat, InputStats(lo_f, hi_f, shape)
            if self.nonfinite == "raise":
                raise ValueError(
                    f"codec {self.name!r}: input has {n_bad} non-finite values ({n_nan} NaN, "
                    f"{n_bad - n_nan} Inf) out of {flat.numel()}; fix the producer, or create the codec "
                    "with nonfinite='zero' to encode them as 0"
                )
            flat = torch.where(bad, torch.zeros((), device=flat.device), flat)
            lo_f, hi_f = torch.stack(list(torch.aminmax(flat))).tolist()
        self._check_range(lo_f, hi_f)
        return flat, InputStats(lo_f, hi_f, shape)

    def _check_range(self, lo: float, hi: float) -> None:
        big = max(abs(lo), abs(hi))
        if big > MAX_ABS_INPUT:
            raise ValueError(
                f"codec {self.name!r}: input magnitude {big:.4g} exceeds the supported {MAX_ABS_INPUT:.4g} (2**64); "
                "float32 scales and norms would overflow. Rescale the tensor (e.g. divide by its max) first"
            )


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def _struct_fields(fmt: str) -> list[str]:
    """Split a struct format into its fields ('4s' stays one field, '3I' becomes three)."""
    fields: list[str] = []
    num = ""
    for ch in fmt:
        if ch.isdigit():
            num += ch
            continue
        if ch == "s":
            fields.append(f"{num or 1}s")
        else:
            fields.extend([ch] * int(num or 1))
        num = ""
    return fields


def _join(chunks: list[Chunk]) -> bytes:
    """Concatenate body chunks into bytes; device tensors are concatenated on the device first."""
    out: list[bytes] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            cat = pending[0] if len(pending) == 1 else torch.cat(pending)
            out.append(cat.cpu().numpy().tobytes())
            pending.clear()

    for c in chunks:
        if isinstance(c, torch.Tensor):
            raw = c.detach().contiguous().reshape(-1).view(torch.uint8)
            if pending and pending[0].device != raw.device:
                flush()
            pending.append(raw)
        else:
            flush()
            out.append(bytes(c))
    flush()
    return b"".join(out)
