"""Mask-encoded sparsification: the paper's worked example and edge cases (docs/papers.md, MS)."""

from __future__ import annotations

import pytest
import torch

from fl_split.codecs import CodecError, create_codec

EXAMPLE = torch.tensor(
    [
        [2.2, 0.8, 1.2, 0.4],
        [1.8, 0.2, 3.1, 2.0],
        [2.1, 0.2, 1.1, 1.7],
        [0.3, 2.8, 1.4, 0.9],
    ]
)


def test_worked_example() -> None:
    codec = create_codec("ms", keep=4 / 16, bits=2)
    payload = codec.encode(EXAMPLE)
    assert len(payload) - codec.header_nbytes(2) == 20  # 4 x 4 B + 16 x 2 bit
    y = codec.decode(payload)
    assert torch.linalg.norm(EXAMPLE - y).item() == pytest.approx(1.0247, abs=5e-5)
    expected = torch.tensor([[2.2, 0.7, 1.4, 0.7], [1.4, 0.0, 3.1, 1.4], [2.1, 0.0, 1.4, 1.4], [0.0, 2.8, 1.4, 0.7]])
    torch.testing.assert_close(y, expected)
    topk = create_codec("topk", keep=4 / 16)
    assert torch.linalg.norm(EXAMPLE - topk.decode(topk.encode(EXAMPLE))).item() == pytest.approx(4.0645, abs=5e-5)


def test_floor_would_be_worse_than_round() -> None:
    # the spec: floor gives 1.18 on the example; our round+clamp gives 1.0247
    t, levels = 2.1, 3
    kept = EXAMPLE >= t
    floor_codes = torch.clamp(torch.floor(EXAMPLE * levels / t), 0, levels - 1)
    floor_rec = torch.where(kept, EXAMPLE, floor_codes * t / levels)
    assert torch.linalg.norm(EXAMPLE - floor_rec).item() == pytest.approx(1.18, abs=0.01)


def test_top_min_zero_gives_no_nan() -> None:
    x = torch.zeros(1000)
    x[:5] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    codec = create_codec("ms", keep=0.01, bits=2)  # k = 10 > 5 nonzeros: t = 0
    y = codec.decode(codec.encode(x))
    assert bool(torch.isfinite(y).all())
    assert torch.equal(y, x)


def test_ties_give_exactly_k_sentinels() -> None:
    x = torch.ones(64)
    codec = create_codec("ms", keep=0.25, bits=3)
    y = codec.decode(codec.encode(x))  # decode checks #sentinels == k
    # 16 kept exactly; the others round(1 * 7 / 1) = 7 -> clamped to 6 -> 6/7
    assert int((y == 1.0).sum()) == 16
    assert torch.allclose(y[y != 1.0], torch.full((48,), 6 / 7))
    x2 = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    y2 = create_codec("ms", keep=0.25, bits=2).decode(create_codec("ms", keep=0.25, bits=2).encode(x2))
    assert y2[0] == 3.0 and int((y2 == 1.0).sum()) == 1
    assert torch.allclose(y2[y2 != 3.0].sort().values, torch.tensor([2 / 3] * 6 + [1.0]))


def test_signed_variant() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g)
    codec = create_codec("ms", keep=0.01, bits=3, signed=True)
    payload = codec.encode(x)
    assert len(payload) - codec.header_nbytes(1) == 4 * 40 + 3 * 4096 // 8 + 4096 // 8
    y = codec.decode(payload)
    k_idx = torch.topk(x.abs(), 40).indices
    assert torch.equal(y[k_idx], x[k_idx])
    assert bool((torch.sign(y[y != 0]) == torch.sign(x[y != 0])).all())
    t = x.abs()[k_idx].min()
    assert (y - x).abs().max() <= t / 7 + 1e-6


def test_unsigned_rejects_negative_input() -> None:
    with pytest.raises(ValueError, match="signed=True"):
        create_codec("ms").encode(torch.tensor([1.0, -1.0] * 100))


def test_k_is_taken_from_the_actual_tensor() -> None:
    codec = create_codec("ms", keep=0.01, bits=2)
    full = torch.relu(torch.randn(256, 8, 4, 4))
    last = full[:100]  # a partial last batch
    for x in (full, last):
        payload = codec.encode(x)
        k = int(0.01 * x.numel())
        assert len(payload) - codec.header_nbytes(4) == 4 * k + (2 * x.numel() + 7) // 8
        assert codec.decode(payload).shape == x.shape


def test_k_zero_or_dense_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 <= k"):
        create_codec("ms", keep=0.01).encode(torch.ones(50))
    with pytest.raises(ValueError, match=r"\(0, 1\) for ms"):
        create_codec("ms", keep=1.0)


@pytest.mark.parametrize("bits", range(1, 9))
def test_error_bound_per_width(bits: int) -> None:
    x = torch.relu(torch.randn(20_000, generator=torch.Generator().manual_seed(bits)))
    codec = create_codec("ms", keep=0.02, bits=bits)
    y = codec.decode(codec.encode(x))
    t = torch.topk(x, 400).values.min()
    levels = 2**bits - 1
    assert (y - x).abs().max() <= t / levels * (1 + 1e-5)  # at most one step (half, except the clamp)
    kept = torch.topk(x, 400).indices
    assert torch.equal(y[kept], x[kept])


def test_ms_beats_topk_at_equal_bits_on_relu_maps() -> None:
    x = torch.relu(torch.randn(64, 32, 8, 8, generator=torch.Generator().manual_seed(0)))
    ms = create_codec("ms", keep=0.01, bits=2)
    topk = create_codec("topk", keep=0.04125)
    p_ms, p_topk = ms.encode(x), topk.encode(x)
    assert abs(len(p_ms) - len(p_topk)) / len(p_topk) < 0.01
    assert (x - ms.decode(p_ms)).norm() < (x - topk.decode(p_topk)).norm()


def test_corrupted_sentinel_count_is_rejected() -> None:
    codec = create_codec("ms", keep=0.25, bits=2)
    payload = bytearray(codec.encode(EXAMPLE))
    payload[-4:] = bytes(4)  # all 16 codes 0: no sentinel left for the 4 values
    with pytest.raises(CodecError, match="kept positions"):
        codec.decode(bytes(payload))
