"""Bit packing of small unsigned codes (1 to 8 bits each), in torch, on any device.

Format (see ``docs/wire-format.md``). Everything is *planar*: codes are cut into consecutive
planes and whole planes are combined with shift/OR, never neighbouring codes within a byte.

* Widths 1, 2, 4 ("sliced"): the ``n`` codes form ``8 / w`` planes of ``P = ceil(n * w / 8)``
  codes (the last plane zero-padded); byte ``i`` is ``sum_j plane_j[i] << (w * j)``, i.e. element
  ``j * P + i`` sits in bits ``w*j .. w*j + w - 1`` of byte ``i``. ``ceil(n * w / 8)`` bytes.
* Width 3: two sliced parts, first the low 2 bits of every code (width 2), then the high bit
  (width 1). ``ceil(2n / 8) + ceil(n / 8)`` bytes.
* Widths 5, 6, 7 ("spill"): the codes form 8 planes of ``G = ceil(n / 8)`` codes. Planes
  ``0 .. b-1`` are *hosts* and become the ``b`` output byte planes; the ``8 - b`` *donor* planes
  ``b + j`` spill their bit ``i`` into bit ``b + j`` of host ``i``:
  ``out_i = plane_i | sum_j bit_i(plane_{b+j}) << (b + j)``. ``b * ceil(n / 8)`` bytes.
* Width 8: the raw bytes.

Why planar: each step is a whole-vector shift/AND/OR over ``n / 8`` to ``n / 2`` bytes of uint8,
which runs at memory bandwidth in torch on CPU and CUDA alike; interleaving neighbouring codes
measured 5-10x slower, and the spill layout is ~3x faster than slicing widths 5-7 into parts
(``simulations/bench_codecs.py`` reports packing bandwidth against ``clone``).
"""

from __future__ import annotations

import torch

_SLICED = {1: [(0, 1)], 2: [(0, 2)], 3: [(0, 2), (2, 1)], 4: [(0, 4)]}


def _check_width(width: int) -> None:
    if not 1 <= width <= 8:
        raise ValueError(f"bit width must be in 1..8, got {width}")


def packed_nbytes(n: int, width: int) -> int:
    """Bytes :func:`pack_bits` produces for ``n`` codes of ``width`` bits."""
    _check_width(width)
    if width == 8:
        return n
    if width in _SLICED:
        return sum((n * w + 7) // 8 for _, w in _SLICED[width])
    return width * ((n + 7) // 8)


def _padded(codes: torch.Tensor, length: int) -> torch.Tensor:
    if codes.numel() == length:
        return codes.contiguous()
    out = torch.zeros(length, dtype=torch.uint8, device=codes.device)
    out[: codes.numel()] = codes
    return out


def pack_bits(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Pack a 1-D uint8 tensor of codes, each ``< 2**width``, into a uint8 tensor.

    Parameters
    ----------
    codes:
        1-D ``torch.uint8`` tensor; values must be below ``2**width`` (callers produce them by
        clamping; higher bits are not guaranteed to be dropped).
    width:
        Bits per code, 1 to 8.

    Returns
    -------
    torch.Tensor
        1-D uint8 tensor of ``packed_nbytes(len(codes), width)`` bytes, on the same device.
    """
    _check_width(width)
    codes = codes.reshape(-1)
    n = codes.numel()
    if width == 8:
        return codes.contiguous()
    out = torch.empty(packed_nbytes(n, width), dtype=torch.uint8, device=codes.device)
    if n == 0:
        return out
    groups = (n + 7) // 8
    padded = _padded(codes, 8 * groups)
    if width in _SLICED:
        _pack_sliced(padded, n, width, out)
    else:
        _pack_spill(padded.view(8, groups), width, out.view(width, groups))
    return out


def _pack_sliced(padded: torch.Tensor, n: int, width: int, out: torch.Tensor) -> None:
    parts = _SLICED[width]
    tmp = torch.empty((n + 1) // 2, dtype=torch.uint8, device=padded.device)
    offset = 0
    for shift, w in parts:
        per, plane = 8 // w, (n * w + 7) // 8
        src = padded[: per * plane].view(per, plane)
        dst = out[offset : offset + plane]
        t = tmp[:plane]
        last = shift + w == width  # the top part needs no mask: codes < 2**width
        for j in range(per):
            if shift:
                torch.bitwise_right_shift(src[j], shift, out=t)
                if not last:
                    t &= (1 << w) - 1
            elif not last:
                torch.bitwise_and(src[j], (1 << w) - 1, out=t)
            else:
                t.copy_(src[j])
            if j == 0:
                dst.copy_(t)
            else:
                t <<= w * j
                dst |= t
        offset += plane


def _pack_spill(planes: torch.Tensor, width: int, out: torch.Tensor) -> None:
    out.copy_(planes[:width])
    t = torch.empty_like(planes[0])
    for j in range(8 - width):
        donor = planes[width + j]
        for i in range(width):
            # bit i of the donor to bit width + j of host i
            torch.bitwise_left_shift(donor, width + j - i, out=t)
            t &= 1 << (width + j)
            out[i] |= t


def float_to_codes(y: torch.Tensor, top: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Convert integral float values in ``[0, top]`` (``top <= 255``) to uint8 codes.

    Goes through int8 when ``top <= 127`` (the bytes are the same): torch's float-to-int8
    conversion is vectorised on CPU, float-to-uint8 measured ~6x slower.
    """
    if out is None:
        out = torch.empty(y.shape, dtype=torch.uint8, device=y.device)
    if top <= 127:
        out.view(torch.int8).copy_(y)
    else:
        out.copy_(y.to(torch.int32))
    return out


def unpack_bits(packed: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: return ``n`` uint8 codes from a packed uint8 tensor.

    Raises
    ------
    ValueError
        If ``packed`` does not hold exactly ``packed_nbytes(n, width)`` bytes (decoders check the
        payload length before calling, so this guards programming errors).
    """
    nbytes = packed_nbytes(n, width)
    packed = packed.reshape(-1)
    if packed.numel() != nbytes:
        raise ValueError(f"expected {nbytes} packed bytes for {n} codes of {width} bits, got {packed.numel()}")
    if width == 8:
        return packed
    groups = (n + 7) // 8
    codes = torch.zeros(8 * groups, dtype=torch.uint8, device=packed.device)
    if n == 0:
        return codes
    if width in _SLICED:
        _unpack_sliced(packed, n, width, codes)
    else:
        _unpack_spill(packed.view(width, groups), width, codes.view(8, groups))
    return codes[:n]


def _unpack_sliced(packed: torch.Tensor, n: int, width: int, codes: torch.Tensor) -> None:
    tmp = torch.empty((n + 1) // 2, dtype=torch.uint8, device=packed.device)
    offset = 0
    for shift, w in _SLICED[width]:
        per, plane = 8 // w, (n * w + 7) // 8
        part = packed[offset : offset + plane]
        dst = codes[: per * plane].view(per, plane)
        t = tmp[:plane]
        for j in range(per):
            torch.bitwise_right_shift(part, w * j, out=t)
            t &= (1 << w) - 1
            if shift:
                t <<= shift
                dst[j] |= t
            else:
                dst[j].copy_(t)
        offset += plane


def _unpack_spill(packed: torch.Tensor, width: int, planes: torch.Tensor) -> None:
    torch.bitwise_and(packed, (1 << width) - 1, out=planes[:width])
    t = torch.empty_like(planes[0])
    for j in range(8 - width):
        donor = planes[width + j]
        for i in range(width):
            torch.bitwise_right_shift(packed[i], width + j - i, out=t)
            t &= 1 << i
            donor |= t
