"""``ms``: mask-encoded sparsification (Zhou et al., ECAI 2024, arXiv 2408.13787).

Implements ``shared/spec/ms.md`` exactly:

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
from fl_split.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from fl_split.codecs.registry import register_codec
from fl_split.codecs.selection import select_topk
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
        idx, t_tensor = select_topk(mag, k)
        idx = torch.sort(idx).values
        t = float(t_tensor.item())
        sentinel = (1 << self.bits) - 1
        if t > 0.0:
            scaled = mag * (sentinel / t)
            scaled.round_().clamp_(0, sentinel - 1)
            codes = scaled.to(torch.uint8)
        else:  # Top_min = 0: every non-kept element is 0
            codes = torch.zeros(d, dtype=torch.uint8, device=flat.device)
        codes[idx] = sentinel
        chunks: list[Chunk] = [mag[idx], pack_bits(codes, self.bits)]
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
        is_kept = codes == (1 << bits) - 1
        n_kept = int(torch.count_nonzero(is_kept).item())  # (bool .sum() is ~100x slower on CPU)
        if n_kept != k:
            raise reader.error(f"mask marks {n_kept} kept positions but the payload carries {k} values")
        return values, codes, is_kept

    def _decode(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        values, codes, is_kept = self._read_codes(reader, header, device)
        _, bits, flags = header.params
        d = header.numel
        t = float(values.min().item())
        out = codes.float().mul_(t / ((1 << bits) - 1))  # (uint8 * float promotion is ~100x slower on CPU)
        out.masked_scatter_(is_kept, values)
        if flags & 1:
            signs = unpack_bits(reader.take_tensor(packed_nbytes(d, 1), torch.uint8, "sign bits", device), 1, d)
            out = torch.where(signs.bool(), -out, out)
        return out

    def _support(self, reader: PayloadReader, header: Header, device: torch.device) -> torch.Tensor:
        return self._read_codes(reader, header, device)[2]
