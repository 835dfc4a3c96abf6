"""Bit packing: exact round trip and exact sizes for every width 1..8."""

from __future__ import annotations

import pytest
import torch

from fl_split.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits


@pytest.mark.parametrize("width", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 9, 15, 16, 17, 1000, 4097])
def test_round_trip_and_size(width: int, n: int) -> None:
    g = torch.Generator().manual_seed(width * 1000 + n)
    codes = torch.randint(0, 2**width, (n,), dtype=torch.uint8, generator=g)
    packed = pack_bits(codes, width)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, width)
    assert torch.equal(unpack_bits(packed, width, n), codes)


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_power_of_two_widths_are_tight(width: int) -> None:
    for n in (1, 5, 8, 13, 64, 1001):
        assert packed_nbytes(n, width) == (n * width + 7) // 8


def test_other_widths_cost_at_most_two_extra_bytes() -> None:
    for width in (3, 5, 6, 7):
        for n in range(1, 200):
            assert (n * width + 7) // 8 <= packed_nbytes(n, width) <= (n * width + 7) // 8 + 2


def test_documented_layout_width_2() -> None:
    # n = 8, width 2: one part, 4 planes of P = 2 codes; byte i = sum_j code[j*P + i] << (2j)
    codes = torch.tensor([1, 2, 3, 0, 2, 1, 3, 3], dtype=torch.uint8)
    packed = pack_bits(codes, 2).tolist()
    assert packed == [1 | (3 << 2) | (2 << 4) | (3 << 6), 2 | (0 << 2) | (1 << 4) | (3 << 6)]


def test_documented_layout_width_3_is_two_parts() -> None:
    codes = torch.tensor([5, 7, 0, 2], dtype=torch.uint8)  # low 2 bits: 1,3,0,2; high bit: 1,1,0,0
    packed = pack_bits(codes, 3).tolist()
    assert packed == [1 | (3 << 2) | (0 << 4) | (2 << 6), 1 | (1 << 1)]


def test_rejects_bad_width_and_length() -> None:
    with pytest.raises(ValueError, match=r"1\.\.8"):
        pack_bits(torch.zeros(4, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="packed bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, 16)
