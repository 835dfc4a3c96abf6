"""Scalar quantizers: ``quant`` (deterministic min-max), ``qsgd`` (stochastic, unbiased), ``sign``.

All three send one small fixed-width code per element, bit-packed with ``bitpack``, and keep
their scale in the parameter block of the header.
"""

from __future__ import annotations

import math

import torch

from fl_split.codecs.base import MAX_ABS_INPUT, Chunk, Codec, InputStats, is_int, require, resolve_seed
from fl_split.codecs.bitpack import float_to_codes, pack_bits, packed_nbytes, unpack_bits
from fl_split.codecs.registry import register_codec
from fl_split.codecs.wire import Header, PayloadReader


class SeededGenerators:
    """One seeded ``torch.Generator`` per device (CUDA generators cannot serve CPU draws)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._by_device: dict[torch.device, torch.Generator] = {}

    def __call__(self, device: torch.device) -> torch.Generator:
        g = self._by_device.get(device)
        if g is None:
            g = self._by_device[device] = torch.Generator(device=device).manual_seed(self.seed)
        return g

    def get_state(self) -> dict[str, torch.Tensor]:
        """``{device: generator state}`` of every generator drawn from so far (for a checkpoint)."""
        return {str(d): g.get_state() for d, g in self._by_device.items()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`get_state` output."""
        for device, s in state.items():
            self(torch.device(device)).set_state(s)


def _check_scale(reader: PayloadReader, *values: float) -> None:
    """Scales an encoder can emit are finite and at most ``MAX_ABS_INPUT``; refuse anything else."""
    if not all(math.isfinite(v) and abs(v) <= MAX_ABS_INPUT for v in values):
        raise reader.error(f"scale parameters must be finite and at most {MAX_ABS_INPUT:.4g} in size, got {values}")


@register_codec
class UniformQuantCodec(Codec):
    """``quant``: deterministic min-max uniform quantization to ``bits`` bits per element.

    ``q = round((x - min) / (max - min) * (2**bits - 1))``; decode ``min + q * (max - min) / (2**bits - 1)``.
    The error is at most half a step, ``(max - min) / (2 * (2**bits - 1))``. min and max travel as
    float32 in the parameter block.

    Parameters
    ----------
    bits:
        Bits per element, 1..8. Default 8.
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "quant"
    codec_id = 3
    param_format = "Bff"  # bits, min, max

    def __init__(self, *, bits: int = 8, nonfinite: str = "raise") -> None:
        super().__init__(nonfinite=nonfinite)  # type: ignore[arg-type]
        require(is_int(bits) and 1 <= bits <= 8, f"bits must be an int in 1..8, got {bits!r}")
        self.bits = bits

    def expected_bits(self, numel: int) -> int:
        return 8 * packed_nbytes(numel, self.bits)

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list[Chunk]]:
        levels = (1 << self.bits) - 1
        lo, hi = stats.min, stats.max
        span = hi - lo
        if span > 0 and math.isfinite(levels / span):
            scaled = (flat - lo).mul_(levels / span)
            codes = float_to_codes(scaled.round_().clamp_(0, levels), levels)
        else:
            codes = torch.zeros(flat.numel(), dtype=torch.uint8, device=flat.device)
        return (self.bits, lo, hi), [pack_bits(codes, self.bits)]

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        bits, lo, hi = header.params
        if not 1 <= bits <= 8:
            raise reader.error(f"invalid bits = {bits} in parameter block")
        _check_scale(reader, lo, hi)
        n = header.numel
        codes = unpack_bits(reader.take_tensor(packed_nbytes(n, bits), torch.uint8, "codes", device), bits, n)
        levels = (1 << bits) - 1
        return codes.float().mul_((hi - lo) / levels).add_(lo)


@register_codec
class QSGDCodec(Codec):
    """``qsgd``: stochastic unbiased quantization (Alistarh et al., NeurIPS 2017), per bucket.

    The tensor is cut into buckets of ``bucket`` consecutive elements (QSGD's practical variant;
    ``bucket=0`` is one bucket for the whole tensor). In a bucket with norm ``n = ||x_b||_2`` and
    ``s`` levels: ``l_i = floor(s |x_i| / n + u_i)``, ``u_i ~ U[0, 1)``, decode
    ``sign(x_i) * l_i * n / s``; so ``E[decode] = x`` and ``|error_i| < n / s``. The variance bound
    ``min(B / s^2, sqrt(B) / s) ||x||^2`` grows with the bucket size B, which is why QSGD buckets.
    Body: one float32 norm per bucket, then per element a sign bit plus ``ceil(log2(s + 1))``
    magnitude bits, fixed width (QSGD's Elias coding of the levels is what ``dither`` does).

    Parameters
    ----------
    levels:
        Number of quantization levels ``s``, 1..127. Default 7 (4 bits per element).
    bucket:
        Elements per bucket (0 = whole tensor). Default 512, as in the QSGD paper's experiments.
    seed:
        Seed of the rounding noise (``None``: drawn from torch's global RNG).
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "qsgd"
    codec_id = 4
    param_format = "BI"  # levels, bucket size (0 = whole tensor)

    def __init__(
        self, *, levels: int = 7, bucket: int = 512, seed: int | None = None, nonfinite: str = "raise"
    ) -> None:
        super().__init__(nonfinite=nonfinite)  # type: ignore[arg-type]
        require(is_int(levels) and 1 <= levels <= 127, f"levels must be an int in 1..127, got {levels!r}")
        require(
            is_int(bucket) and 0 <= bucket < 2**32,
            f"bucket must be an int >= 0 (elements per bucket, 0 = whole tensor), got {bucket!r}",
        )
        self.levels = levels
        self.bucket = bucket
        self.seed = resolve_seed(seed)
        self._generators = SeededGenerators(self.seed)

    @staticmethod
    def code_width(levels: int) -> int:
        """Bits per element: one sign bit plus the magnitude bits."""
        return 1 + max(1, math.ceil(math.log2(levels + 1)))

    @staticmethod
    def num_buckets(numel: int, bucket: int) -> int:
        """Number of buckets (and float32 norms) for ``numel`` elements."""
        return 1 if bucket == 0 or bucket >= numel else -(-numel // bucket)

    def expected_bits(self, numel: int) -> int:
        if numel == 0:
            return 0
        return 32 * self.num_buckets(numel, self.bucket) + 8 * packed_nbytes(numel, self.code_width(self.levels))

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list[Chunk]]:
        s, d = self.levels, flat.numel()
        width = self.code_width(s)
        nb = self.num_buckets(d, self.bucket)
        size = self.bucket if nb > 1 else d  # the last bucket may be shorter
        padded = flat if nb * size == d else torch.cat([flat, flat.new_zeros(nb * size - d)])
        norms = torch.linalg.vector_norm(padded.view(nb, size), dim=1, dtype=torch.float64).float()
        scale = torch.where(norms > 0, s / norms, torch.zeros_like(norms))  # a zero bucket sends zeros
        u = torch.rand(d, device=flat.device, generator=self._generators(flat.device))
        per_elem = scale.repeat_interleave(size)[:d] if nb > 1 else scale
        mag = float_to_codes(flat.abs().mul_(per_elem).add_(u).floor_().clamp_(0, s), s)
        codes = mag | torch.bitwise_left_shift((flat < 0).to(torch.uint8), width - 1)
        return (s, 0 if nb == 1 else size), [norms, pack_bits(codes, width)]

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        s, bucket = header.params
        d = header.numel
        if not 1 <= s <= 127:
            raise reader.error(f"invalid levels = {s} in parameter block")
        nb = self.num_buckets(d, bucket)
        norms = reader.take_tensor(nb, torch.float32, "bucket norms", device)
        if not bool(torch.isfinite(norms).all()) or bool((norms < 0).any()):
            raise reader.error("bucket norms must be finite and non-negative")
        width = self.code_width(s)
        codes = unpack_bits(reader.take_tensor(packed_nbytes(d, width), torch.uint8, "codes", device), width, d)
        sign_bit = 1 << (width - 1)
        mag = codes & (sign_bit - 1)
        if bool((mag > s).any()):
            raise reader.error(f"a level exceeds levels = {s}")
        step = norms / s
        per_elem = step.repeat_interleave(bucket)[:d] if nb > 1 else step
        out = mag.float().mul_(per_elem)
        return torch.where(codes >= sign_bit, -out, out)


@register_codec
class SignCodec(Codec):
    """``sign``: one sign bit per element, scaled by the mean magnitude (EF-signSGD style).

    Decode ``scale * sign(x)`` with ``scale = ||x||_1 / d`` (float32) and ``sign(0) = +1``. Biased:
    compose with :class:`~fl_split.codecs.ErrorFeedback` as EF-signSGD (Karimireddy et al. 2019) does.

    Parameters
    ----------
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "sign"
    codec_id = 9
    param_format = "f"  # scale

    def expected_bits(self, numel: int) -> int:
        return 8 * packed_nbytes(numel, 1)

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list[Chunk]]:
        # float32 is safe: |x| <= 2**64 and d < 2**31 keep the sum below 2**95
        scale = float(flat.abs().mean().item())
        return (scale,), [pack_bits((flat < 0).to(torch.uint8), 1)]

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        (scale,) = header.params
        _check_scale(reader, scale)
        n = header.numel
        neg = unpack_bits(reader.take_tensor(packed_nbytes(n, 1), torch.uint8, "sign bits", device), 1, n)
        return neg.float().mul_(-2.0 * scale).add_(scale)
