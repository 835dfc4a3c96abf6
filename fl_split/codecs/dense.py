"""Dense codecs: float32 passthrough and half-precision casts."""

from __future__ import annotations

from typing import ClassVar

import torch

from fl_split.codecs.base import Codec, InputStats
from fl_split.codecs.registry import register_codec
from fl_split.codecs.wire import Header, PayloadReader


class _DenseCast(Codec):
    """Send every element as ``wire_dtype`` (raw little-endian values, no parameters)."""

    wire_dtype: ClassVar[torch.dtype]

    def expected_bits(self, numel: int) -> int:
        return 8 * numel * torch.empty((), dtype=self.wire_dtype).element_size()

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list]:
        return (), [flat.to(self.wire_dtype)]

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        return reader.take_tensor(header.numel, self.wire_dtype, "values", device).float()


@register_codec
class NoneCodec(_DenseCast):
    """``none``: float32 passthrough (exact for float32 input; the uncompressed baseline).

    Parameters
    ----------
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "none"
    codec_id = 0
    wire_dtype = torch.float32


@register_codec
class Fp16Codec(_DenseCast):
    """``fp16``: cast to IEEE half precision (2 bytes/element; values beyond ±65504 become ±inf).

    Parameters
    ----------
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "fp16"
    codec_id = 1
    wire_dtype = torch.float16

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list]:
        big = max(abs(stats.min), abs(stats.max))
        if big > 65504.0:
            raise ValueError(
                f"codec 'fp16': input magnitude {big:.4g} exceeds the float16 range (65504); "
                "use 'bf16' (float32 range) or scale the tensor"
            )
        return super()._encode(flat, stats)


@register_codec
class Bf16Codec(_DenseCast):
    """``bf16``: cast to bfloat16 (2 bytes/element, float32 range, 8-bit mantissa).

    Parameters
    ----------
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "bf16"
    codec_id = 2
    wire_dtype = torch.bfloat16
