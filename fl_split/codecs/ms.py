"""``ms``: mask-encoded sparsification (Zhou et al., ECAI 2024, arXiv 2408.13787).

Implements the method as ``docs/papers.md`` (MS) states it:

* ``k = floor(keep * d)`` over the whole tensor (batch included); ``1 <= k < d`` is required
  (``k >= d`` would be dense: use ``none``).
* The exact top-k positions (by a top-k, never a threshold test, so ties give exactly k),
  ``t`` = the smallest kept value ("Top_min").
* Every element gets the ``b``-bit code ``q = clamp(round(x * (L / t)), 0, L - 1)`` with
  ``L = 2**b - 1`` (round half to even, computed in float32); ``t == 0`` gives ``q = 0``.
  Kept positions get the sentinel ``q = L``.
* Wire body: the k kept values (float32, ascending position order), then the ``d`` codes
  bit-packed (``bitpack`` format). Signed variant: codes and top-k on ``|x|``, kept values are
  magnitudes, plus ``d`` packed sign bits (1 = negative). No scale is sent.
* Decode: ``t = min(v)``; non-sentinel positions get ``q * t / L``; sentinel positions are filled
  with ``v`` in row-major order; the count of sentinels must equal ``k``.
"""

from __future__ import annotations

import math

import torch

from fl_split.codecs.base import Chunk, Codec, InputStats, is_int, is_number, require
from fl_split.codecs.bitpack import float_to_codes, pack_bits, packed_nbytes, unpack_bits
from fl_split.codecs.registry import register_codec
from fl_split.codecs.selection import flatnonzero, select_topk
from fl_split.codecs.wire import Header, PayloadReader


@register_codec
class MaskSparsificationCodec(Codec):
    """``ms``: top-k values plus a ``bits``-wide per-element mask that also quantizes the rest.

    Parameters
    ----------
    keep:
        Fraction of elements sent exactly, in (0, 1); ``k = floor(keep * d)`` must be in ``[1, d)``.
        Default 0.01 (the paper's 99 % sparsification).
    bits:
        Mask width ``b`` in 1..8. Default 2 (2.32 bits/element at keep 0.01 = 7.25 % of float32).
        ``bits = 1`` degenerates to top-k with a bitmap (the only non-sentinel code is 0).
    signed:
        False (default) for non-negative inputs such as post-ReLU maps (a negative input raises
        ``ValueError``); True adds one sign bit per element.
    nonfinite:
        See :class:`~fl_split.codecs.base.Codec`.
    """

    name = "ms"
    codec_id = 8
    param_format = "IBB"  # k, bits, flags (bit0: signed)

    def __init__(self, *, keep: float = 0.01, bits: int = 2, signed: bool = False, nonfinite: str = "raise") -> None:
        super().__init__(nonfinite=nonfinite)  # type: ignore[arg-type]
        require(
            is_number(keep) and 0.0 < keep < 1.0,
            f"keep is the fraction of elements sent exactly and must be in (0, 1) for ms, got {keep!r} "
            "(at keep = 1 nothing is sparsified: use codec 'none')",
        )
        require(is_int(bits) and 1 <= bits <= 8, f"bits (mask width) must be an int in 1..8, got {bits!r}")
        self.keep = float(keep)
        self.bits = bits
        self.signed = bool(signed)

    def k_for(self, numel: int) -> int:
        """Number of exactly-kept elements for a tensor of ``numel`` elements.

        Raises
        ------
        ValueError
            If ``floor(keep * numel)`` is 0 or ``numel`` (the spec requires ``1 <= k < d``).
        """
        k = math.floor(self.keep * numel)
        if not 1 <= k < numel:
            raise ValueError(
                f"codec 'ms': keep={self.keep} gives k = {k} for a tensor of {numel} elements; MS needs "
                f"1 <= k < {numel} (raise keep to at least {1 / numel:.3g}, or send this tensor with 'none')"
            )
        return k

    def expected_bits(self, numel: int) -> int:
        if numel == 0:
            return 0
        k = self.k_for(numel)
        bits = 32 * k + 8 * packed_nbytes(numel, self.bits)
        if self.signed:
            bits += 8 * packed_nbytes(numel, 1)
        return bits

    def _encode(self, flat: torch.Tensor, stats: InputStats) -> tuple[tuple, list[Chunk]]:
        d = flat.numel()
        k = self.k_for(d)
        if not self.signed and stats.min < 0:
            raise ValueError(
                f"codec 'ms' (signed=False) got negative values (min {stats.min:.4g}); unsigned MS is for "
                "non-negative maps such as post-ReLU activations: create it with signed=True"
            )
        mag = flat.abs() if self.signed else flat
        top = select_topk(mag, k)  # ascending positions
        idx, t = top.indices, float(top.kth.item())
        sentinel = (1 << self.bits) - 1
        if t > 0.0:
            codes = _quantize(mag, sentinel / t, sentinel - 1)
        else:  # Top_min = 0: every non-kept element is 0
            codes = torch.zeros(d, dtype=torch.uint8, device=flat.device)
        codes[idx] = sentinel
        chunks: list[Chunk] = [top.values, pack_bits(codes, self.bits)]
        if self.signed:
            chunks.append(pack_bits((flat < 0).to(torch.uint8), 1))
        return (k, self.bits, int(self.signed)), chunks

    def _read_codes(
        self, reader: PayloadReader, header: Header, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read and check the kept values and the codes; return (values, codes, kept-position mask)."""
        k, bits, flags = header.params
        d = header.numel
        if not 1 <= bits <= 8 or flags & ~1 or not 1 <= k < d:
            raise reader.error(f"invalid parameter block: k = {k} for {d} elements, bits = {bits}, flags = {flags}")
        values = reader.take_tensor(k, torch.float32, "kept values", device)
        packed = reader.take_tensor(packed_nbytes(d, bits), torch.uint8, "mask codes", device)
        codes = unpack_bits(packed, bits, d)
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise reader.error("kept values must be finite and non-negative magnitudes")
        kept = sentinel_positions(codes, bits)
        if kept.numel() != k:
            raise reader.error(f"mask marks {kept.numel()} kept positions but the payload carries {k} values")
        return values, codes, kept

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        values, codes, kept = self._read_codes(reader, header, device)
        _, bits, flags = header.params
        d = header.numel
        t = float(values.min().item())
        out = codes.float().mul_(t / ((1 << bits) - 1))  # (uint8 * float promotion is ~100x slower on CPU)
        out[kept] = values  # kept is ascending: the values' row-major order
        if flags & 1:
            signs = unpack_bits(reader.take_tensor(packed_nbytes(d, 1), torch.uint8, "sign bits", device), 1, d)
            out = torch.where(signs.bool(), -out, out)
        return out

    def _support(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        mask = torch.zeros(header.numel, dtype=torch.bool, device=device)
        mask[self._read_codes(reader, header, device)[2]] = True
        return mask


#: Elements quantized per block in :func:`_quantize`: 1 MiB of float32 stays in cache between the
#: four passes (multiply, clamp, round, narrow), which measured ~1.5x faster than whole-tensor passes.
_QUANT_BLOCK = 1 << 18


def _quantize(mag: torch.Tensor, scale: float, top: int) -> torch.Tensor:
    """``clamp(round(mag * scale), 0, top)`` as uint8 (round half to even, in float32).

    ``round(clamp(y, 0, top)) == clamp(round(y), 0, top)`` for an integer ``top``, so clamping
    first is the same code.
    """
    codes = torch.empty(mag.numel(), dtype=torch.uint8, device=mag.device)
    block = mag.numel() if mag.is_cuda else _QUANT_BLOCK  # one kernel per pass on a GPU
    for start in range(0, mag.numel(), block):
        y = mag[start : start + block] * scale
        float_to_codes(y.clamp_(0, top).round_(), top, out=codes[start : start + block])
    return codes


def sentinel_positions(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Ascending positions of the codes equal to ``2**bits - 1`` (all ``bits`` low bits set).

    Works on the codes as int64 words: a code is the sentinel exactly when bits ``0 .. bits-1``
    of its byte are all 1, which is bit 0 of ``w & (w >> 1) & ... & (w >> (bits - 1))`` for the
    byte's word ``w`` (shifts below 8 never carry one byte's bits into another byte's bit 0).
    Codes never exceed the sentinel, as :func:`unpack_bits` yields ``bits``-wide values.
    """
    n = codes.numel()
    whole = n - n % 8
    if whole == 0 or codes.storage_offset() % 8:
        return torch.nonzero(codes == (1 << bits) - 1).squeeze(1)
    words = codes[:whole].view(torch.int64)
    # start from `words >> 1`: a clone of `words` followed by the same loop measured ~3x slower
    hit = words >> 1 if bits > 1 else words.clone()
    if bits > 1:
        hit &= words
    for shift in range(2, bits):
        hit &= words >> shift
    hit &= 0x0101010101010101
    pos = flatnonzero(hit.view(torch.uint8))
    if whole < n:
        pos = torch.cat([pos, torch.nonzero(codes[whole:] == (1 << bits) - 1).squeeze(1) + whole])
    return pos
