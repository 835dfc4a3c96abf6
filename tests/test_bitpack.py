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


def test_other_widths_cost_at_most_a_few_extra_bytes() -> None:
    for n in range(1, 200):
        tight = (n * 3 + 7) // 8
        assert tight <= packed_nbytes(n, 3) <= tight + 1
        for width in (5, 6, 7):  # spill layout: width bytes per group of 8 codes
            assert packed_nbytes(n, width) == width * ((n + 7) // 8)
            assert packed_nbytes(n, width) - (n * width + 7) // 8 < width


def test_documented_layout_width_2() -> None:
    # n = 8, width 2: one part, 4 planes of P = 2 codes; byte i = sum_j code[j*P + i] << (2j)
    codes = torch.tensor([1, 2, 3, 0, 2, 1, 3, 3], dtype=torch.uint8)
    packed = pack_bits(codes, 2).tolist()
    assert packed == [1 | (3 << 2) | (2 << 4) | (3 << 6), 2 | (0 << 2) | (1 << 4) | (3 << 6)]


def test_documented_layout_width_3_is_two_parts() -> None:
    codes = torch.tensor([5, 7, 0, 2], dtype=torch.uint8)  # low 2 bits: 1,3,0,2; high bit: 1,1,0,0
    packed = pack_bits(codes, 3).tolist()
    assert packed == [1 | (3 << 2) | (0 << 4) | (2 << 6), 1 | (1 << 1)]


def test_documented_layout_width_7_spill() -> None:
    # 8 codes, one group: hosts are codes 0..6, the donor code 7 spills bit i into bit 7 of byte i
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0b1010101], dtype=torch.uint8)
    expected = [c | (((0b1010101 >> i) & 1) << 7) for i, c in enumerate([1, 2, 3, 4, 5, 6, 7])]
    assert pack_bits(codes, 7).tolist() == expected


def test_documented_layout_width_6_spill() -> None:
    # 9 codes -> 2 groups: planes of G = 2 codes; hosts 0..5, donors 6 and 7 (bits 6 and 7 of each byte)
    codes = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17, 63], dtype=torch.uint8)
    planes = [[10, 11], [12, 13], [14, 15], [16, 17], [63, 0], [0, 0], [0, 0], [0, 0]]
    expected = [
        planes[i][g] | (((planes[6][g] >> i) & 1) << 6) | (((planes[7][g] >> i) & 1) << 7)
        for i in range(6)
        for g in range(2)
    ]
    assert pack_bits(codes, 6).tolist() == expected


def test_rejects_bad_width_and_length() -> None:
    with pytest.raises(ValueError, match=r"1\.\.8"):
        pack_bits(torch.zeros(4, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="packed bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, 16)
