"""Bit packing of small unsigned codes (1 to 8 bits each), in torch, on any device.

Format ("bit-sliced planar"; see ``docs/wire-format.md``). A width ``b`` is split into parts whose
widths are the powers of two in ``b``, widest first (``7 = 4 + 2 + 1``, ``6 = 4 + 2``, ``5 = 4 + 1``,
``3 = 2 + 1``; 1, 2, 4 and 8 are one part). Part ``p`` of width ``w`` carries bits
``s .. s + w - 1`` of every code, where ``s`` is the sum of the widths before it. Inside a part the
``n`` codes are cut into ``8 / w`` consecutive planes of ``P = ceil(n * w / 8)`` codes each (the last
plane zero-padded), and byte ``i`` of the part is ``sum_j plane_j[i] << (w * j)``, that is, element
``j * P + i`` sits in bits ``w*j .. w*j + w - 1`` of byte ``i``. Width 8 is the raw bytes.
The parts are concatenated, widest first. A part of width ``w`` is ``ceil(n * w / 8)`` bytes, so
widths 1, 2, 4 and 8 cost exactly ``ceil(n * b / 8)`` bytes and the others at most two more.

Why planar: each part is a handful of whole-vector shift/OR passes over ``n * w / 8`` bytes of
uint8, which runs at memory bandwidth in torch on CPU and CUDA alike; interleaving neighbouring
codes into one byte would need per-element gathers or 64-bit word tricks that measured 5-10x
slower (``simulations/bench_codecs.py`` reports the packing bandwidth against ``clone``).
"""

from __future__ import annotations

import torch

_PART_WIDTHS = (4, 2, 1)


def _parts(width: int) -> list[tuple[int, int]]:
    """(shift, part_width) pairs of a code width, widest part first."""
    if not 1 <= width <= 8:
        raise ValueError(f"bit width must be in 1..8, got {width}")
    if width == 8:
        return [(0, 8)]
    out = []
    shift = 0
    for w in _PART_WIDTHS:
        if width & w:
            out.append((shift, w))
            shift += w
    return out


def packed_nbytes(n: int, width: int) -> int:
    """Bytes :func:`pack_bits` produces for ``n`` codes of ``width`` bits."""
    return sum((n * w + 7) // 8 for _, w in _parts(width))


def _pack_part(sub: torch.Tensor, w: int, n: int) -> torch.Tensor:
    per = 8 // w
    plane = (n * w + 7) // 8
    if plane * per != n:
        padded = torch.zeros(plane * per, dtype=torch.uint8, device=sub.device)
        padded[:n] = sub
        sub = padded
    planes = sub.view(per, plane)
    out = planes[0].clone()
    for j in range(1, per):
        out |= torch.bitwise_left_shift(planes[j], w * j)
    return out


def pack_bits(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Pack a 1-D uint8 tensor of codes, each ``< 2**width``, into a uint8 tensor.

    Parameters
    ----------
    codes:
        1-D ``torch.uint8`` tensor; values must be below ``2**width`` (callers produce them by
        clamping; higher bits would be dropped).
    width:
        Bits per code, 1 to 8.

    Returns
    -------
    torch.Tensor
        1-D uint8 tensor of ``packed_nbytes(len(codes), width)`` bytes, on the same device.
    """
    parts = _parts(width)
    codes = codes.reshape(-1)
    n = codes.numel()
    if width == 8:
        return codes.contiguous()
    if n == 0:
        return torch.empty(0, dtype=torch.uint8, device=codes.device)
    if len(parts) == 1:
        return _pack_part(codes, width, n)
    chunks = []
    for shift, w in parts:
        sub = torch.bitwise_right_shift(codes, shift) if shift else codes.clone()
        sub &= (1 << w) - 1
        chunks.append(_pack_part(sub, w, n))
    return torch.cat(chunks)


def unpack_bits(packed: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: return ``n`` uint8 codes from a packed uint8 tensor.

    Raises
    ------
    ValueError
        If ``packed`` does not hold exactly ``packed_nbytes(n, width)`` bytes (decoders check the
        payload length before calling, so this guards programming errors).
    """
    parts = _parts(width)
    nbytes = packed_nbytes(n, width)
    if packed.numel() != nbytes:
        raise ValueError(f"expected {nbytes} packed bytes for {n} codes of {width} bits, got {packed.numel()}")
    packed = packed.reshape(-1)
    if width == 8:
        return packed
    out: torch.Tensor | None = None
    offset = 0
    for shift, w in parts:
        per = 8 // w
        plane = (n * w + 7) // 8
        part = packed[offset : offset + plane]
        offset += plane
        codes = torch.empty(per, plane, dtype=torch.uint8, device=packed.device)
        mask = (1 << w) - 1
        for j in range(per):
            if j:
                torch.bitwise_right_shift(part, w * j, out=codes[j])
            else:
                codes[j].copy_(part)
            codes[j] &= mask
        flat = codes.view(-1)[:n]
        if out is None:
            out = flat if shift == 0 else torch.bitwise_left_shift(flat, shift)
        else:
            out |= torch.bitwise_left_shift(flat, shift)
    assert out is not None
    return out
