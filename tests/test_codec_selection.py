"""Exact top-k selection and mask compaction (``fl_split.codecs.selection``, MS's sentinel search)."""

from __future__ import annotations

import pytest
import torch

from fl_split.codecs import selection
from fl_split.codecs.bitpack import float_to_codes
from fl_split.codecs.ms import sentinel_positions
from fl_split.codecs.selection import flatnonzero, select_topk


def reference_topk(a: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending positions of the k largest, ties by lowest position (a stable sort)."""
    order = torch.sort(a, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 1001, 100_003])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_flatnonzero_equals_torch_nonzero(n: int, density: float) -> None:
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=g) < density
    expected = torch.nonzero(mask).squeeze(1)
    assert torch.equal(flatnonzero(mask), expected)
    assert torch.equal(flatnonzero(mask.to(torch.uint8) * 7), expected)  # any nonzero byte counts


def test_flatnonzero_on_a_view_that_is_not_word_aligned() -> None:
    mask = torch.rand(1003, generator=torch.Generator().manual_seed(1)) < 0.1
    view = mask[3:]  # storage offset 3: cannot be read as int64 words
    assert torch.equal(flatnonzero(view), torch.nonzero(view).squeeze(1))


@pytest.mark.parametrize("d, k", [(1000, 10), (1000, 1000), (300_000, 3000), (300_001, 1), (300_000, 50_000)])
def test_select_topk_matches_a_stable_sort(d: int, k: int) -> None:
    a = torch.randn(d, generator=torch.Generator().manual_seed(d + k)).abs()
    top = select_topk(a, k)
    assert torch.equal(top.indices, reference_topk(a, k))
    assert torch.equal(top.values, a[top.indices])
    assert float(top.kth) == float(a[top.indices].min())


@pytest.mark.parametrize("d", [1000, 300_000])
def test_ties_go_to_the_lowest_positions_on_every_path(d: int) -> None:
    # five distinct values: thousands of ties at the k-th value
    a = torch.randint(0, 5, (d,), generator=torch.Generator().manual_seed(2)).float()
    k = d // 100
    top = select_topk(a, k)
    assert top.indices.numel() == k
    assert torch.equal(top.indices, reference_topk(a, k))


def test_sparse_maps_with_fewer_positives_than_k_take_the_first_zeros() -> None:
    d = 300_000
    a = torch.zeros(d)
    a[torch.arange(5, d, 10_000)] = 1.0  # 30 positives, k = 3000
    top = select_topk(a, 3000)
    assert torch.equal(top.indices, reference_topk(a, 3000))
    assert float(top.kth) == 0.0


def test_a_misleading_sample_still_gives_the_exact_top_k(monkeypatch: pytest.MonkeyPatch) -> None:
    # the sample sees only a region of large values: both threshold estimates are far too high
    d, k = 300_000, 3000
    a = torch.rand(d, generator=torch.Generator().manual_seed(3))
    sample = torch.arange(10_000, 10_000 + selection._SAMPLE)
    a[sample] += 10.0
    calls = []
    monkeypatch.setattr(selection, "_sample_positions", lambda n, device: sample)
    real_full = selection._full
    monkeypatch.setattr(selection, "_full", lambda x, kk: calls.append(kk) or real_full(x, kk))
    top = select_topk(a, k)
    assert calls == [k]  # fell back to the full torch.topk
    assert torch.equal(top.indices, reference_topk(a, k))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 8, 13, 4096, 4099])
def test_sentinel_positions_equal_a_byte_comparison(bits: int, n: int) -> None:
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
    expected = torch.nonzero(codes == (1 << bits) - 1).squeeze(1)
    assert torch.equal(sentinel_positions(codes, bits), expected)


@pytest.mark.parametrize("top", [1, 3, 126, 127, 128, 254, 255])
def test_float_to_codes_is_the_plain_conversion(top: int) -> None:
    y = torch.arange(top + 1, dtype=torch.float32).repeat(3)
    assert torch.equal(float_to_codes(y, top), y.to(torch.uint8))
