"""Tests of the ``dither`` codec (Malcom-PSGD's quantizer + fl-split's source coder; docs/papers.md)."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_split.codecs import CodecError, create_codec, decode_payload
from fl_split.codecs.dither import (
    MAX_LEVELS,
    STEP_MAX_LEVEL,
    DitherCodec,
    dequantize,
    dither_uniform,
    quantize,
    variance_factor,
)
from fl_split.codecs.source_coding import (
    _positions_from_ranks,
    _ranks_among_unclaimed,
    bit_length,
    decode_sparse_levels,
    encode_sparse_levels,
    golomb_parameter,
    sparse_levels_bits,
    unzigzag,
    zigzag,
)

T4_Z = [0, 0, 1, 0, 0, 0, -1, 0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0]


# --------------------------------------------------------------------------- reference coder (plain Python)
def _ref_gamma(n: int) -> str:
    b = bin(n)[2:]
    return "0" * (len(b) - 1) + b


def _ref_m(n: int, total: int) -> int:
    """Smallest m >= 1 with q^m (1 + q) <= 1, q = 1 - n/total (exact rational arithmetic)."""
    q = 1 - Fraction(n, total)
    m = 1
    while q**m * (1 + q) > 1:
        m += 1
    return m


def _ref_golomb(g: int, m: int) -> str:
    q, r = divmod(g, m)
    k = m.bit_length() - 1
    u = 2 ** (k + 1) - m
    tb = (format(r, f"0{k}b") if k else "") if r < u else format(r + u, f"0{k + 1}b")
    return "0" * q + "1" + tb


def _ref_encode(z: list[int]) -> str:
    """The source coder's bit string, built position by position."""
    counts: dict[int, int] = {}
    for v in z:
        if v:
            counts[v] = counts.get(v, 0) + 1
    values = sorted(counts, key=lambda a: (counts[a], abs(a), a))
    out = _ref_gamma(len(values) + 1)
    claimed = [False] * len(z)
    for a in values:
        total = claimed.count(False)
        m = _ref_m(counts[a], total)
        out += _ref_gamma(2 * a - 1 if a > 0 else -2 * a) + _ref_gamma(counts[a])
        gap = 0
        for i, v in enumerate(z):
            if claimed[i]:
                continue
            if v == a:
                out += _ref_golomb(gap, m)
                gap = 0
            else:
                gap += 1
        for i, v in enumerate(z):
            if v == a:
                claimed[i] = True
    return out


def _sparse(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.flatnonzero(z)
    return pos, z[pos].astype(np.int64)


def _bits(data: bytes, nbits: int) -> str:
    return "".join(format(b, "08b") for b in data)[:nbits]


# --------------------------------------------------------------------------- construction
def test_defaults_and_registry() -> None:
    codec = create_codec("dither")
    assert isinstance(codec, DitherCodec)
    assert (codec.levels, codec.step, codec.subtractive, codec.rescale) == (15, None, False, False)
    assert codec.codec_id == 12 and not codec.fixed_size
    assert set(codec.config()) == {"levels", "step", "subtractive", "rescale", "seed", "nonfinite"}


@pytest.mark.parametrize(
    "params",
    [
        {"levels": 0},
        {"levels": MAX_LEVELS + 1},
        {"levels": True},
        {"levels": 2.0},
        {"step": 0.0},
        {"step": -1.0},
        {"step": float("nan")},
        {"step": float("inf")},
        {"step": 1e-50},  # underflows float32
        {"step": 1e39},  # overflows float32
        {"step": 0.1, "rescale": True},
        {"subtractive": 1},
        {"rescale": "yes"},
        {"seed": -1},
        {"nonfinite": "keep"},
    ],
)
def test_invalid_parameters_raise(params: dict) -> None:
    with pytest.raises(ValueError):
        create_codec("dither", **params)


def test_error_message_names_range() -> None:
    with pytest.raises(ValueError, match=r"\[1, 32768\]"):
        create_codec("dither", levels=0)


# --------------------------------------------------------------------------- QSGD quantizer
T2_X = torch.tensor([0.3, -0.7, 0.05, 0.0], dtype=torch.float64)


def test_t2_exact_error_and_bound() -> None:
    s, d = 4, 4
    norm = float(T2_X.norm())
    delta = norm / s
    assert norm == pytest.approx(0.763217, abs=1e-6)
    assert delta == pytest.approx(0.190804, abs=1e-6)
    frac = (T2_X.abs() / delta) % 1
    exact_mse = float((delta**2 * frac * (1 - frac)).sum())
    assert exact_mse == pytest.approx(0.024017, abs=1e-6)
    bound = variance_factor(d, s) * norm**2
    assert bound == pytest.approx(0.145625, abs=1e-6)
    assert exact_mse < bound


def test_t2_unbiased_and_bounded_over_200k_draws() -> None:
    n, s = 200_000, 4
    gen = torch.Generator().manual_seed(0)
    z, scale = quantize(T2_X.expand(n, 4), levels=s, generator=gen)
    q = dequantize(z, scale, levels=s)
    delta = float(scale[0, 0]) / s
    assert delta == pytest.approx(0.190804, abs=1e-6)
    err = q - T2_X
    assert bool((err.abs() < delta).all())
    frac = (T2_X.abs() / delta) % 1
    sigma = delta * torch.sqrt(frac * (1 - frac))
    assert bool(((q.mean(0) - T2_X).abs() <= 5 * sigma / math.sqrt(n)).all())
    assert float(err[:, 3].abs().max()) == 0.0  # the zero coordinate has no variance
    assert float((err**2).sum(1).mean()) == pytest.approx(0.024017, rel=0.02)


@pytest.mark.parametrize("levels", [4, 15, 16, 255])
def test_t2_zero_and_scaled_basis_vectors_are_exact(levels: int) -> None:
    codec = create_codec("dither", levels=levels, seed=3)
    assert torch.equal(codec.decode(codec.encode(torch.zeros(9))), torch.zeros(9))
    for c in (0.3, -0.7, 1e-20, 1.0e18, -123.456):
        for k in (0, 4, 8):
            e = torch.zeros(9)
            e[k] = c
            for _ in range(5):
                assert torch.equal(codec.decode(codec.encode(e)), e)


# --------------------------------------------------------------------------- subtractive dither
def test_t3_subtractive_error_is_uniform() -> None:
    step, n = 0.25, 200_000
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, generator=gen, dtype=torch.float64) * 3
    u = dither_uniform(7, n)
    z, scale = quantize(x, step=step, subtractive=True, uniform=u)
    y = dequantize(z, scale, fixed_step=True, subtractive=True, uniform=u)
    err = y - x
    assert float(err.abs().max()) <= 0.125
    assert float((err**2).mean()) == pytest.approx(step**2 / 12, rel=0.03)
    assert step**2 / 12 == pytest.approx(0.005208, abs=1e-6)
    assert abs(float(err.mean())) < 5 * step / math.sqrt(12 * n)


def test_t3_codec_sender_and_receiver_reconstruct_identically() -> None:
    x = torch.randn(5000, generator=torch.Generator().manual_seed(2)) * 3
    sender = create_codec("dither", step=0.25, subtractive=True, seed=11)
    payload = sender.encode(x)
    mine = sender.decode(payload)
    theirs = create_codec("dither", seed=999).decode(payload)
    assert torch.equal(mine, theirs)
    assert torch.equal(mine, decode_payload(payload))
    err = (mine.double() - x.double()).abs()
    assert float(err.max()) <= 0.125 + 1e-6
    assert float((err**2).mean()) == pytest.approx(0.25**2 / 12, rel=0.1)
    # Same codec seed, same message sequence: same seeds, same bytes.
    assert create_codec("dither", step=0.25, subtractive=True, seed=11).encode(x) == payload


def test_subtractive_norm_scaled_and_rescaled() -> None:
    x = torch.randn(3000, generator=torch.Generator().manual_seed(3))
    plain = create_codec("dither", subtractive=True, seed=5)
    scaled = create_codec("dither", subtractive=True, rescale=True, seed=5)
    a, b = plain.encode(x), scaled.encode(x)
    tau = 1 + variance_factor(3000, 15, subtractive=True)
    torch.testing.assert_close(scaled.decode(b).double(), plain.decode(a).double() / tau, rtol=1e-6, atol=1e-7)
    delta = float(x.double().norm()) / 15
    assert float((plain.decode(a) - x).abs().max()) <= delta / 2 + 1e-5


# --------------------------------------------------------------------------- the coder
def test_t4_example_is_68_bits() -> None:
    z = np.array(T4_Z)
    pos, vals = _sparse(z)
    assert [golomb_parameter(1, 20), golomb_parameter(1, 19), golomb_parameter(2, 18)] == [14, 13, 6]
    data, nbits = encode_sparse_levels(pos, vals, 20)
    assert 32 + nbits == 68
    assert 32 + sparse_levels_bits(pos, vals, 20) == 68
    expected = (
        _ref_gamma(4)
        + _ref_gamma(2) + _ref_gamma(1) + _ref_golomb(6, 14)  # value -1
        + _ref_gamma(3) + _ref_gamma(1) + _ref_golomb(10, 13)  # value 2
        + _ref_gamma(1) + _ref_gamma(2) + _ref_golomb(2, 6) + _ref_golomb(9, 6)  # value 1
    )  # fmt: skip
    assert [len(p) for p in (_ref_gamma(4), _ref_golomb(6, 14), _ref_golomb(10, 13), _ref_golomb(9, 6))] == [5, 5, 5, 5]
    assert _bits(data, nbits) == expected == _ref_encode(T4_Z)
    p, v, n = decode_sparse_levels(data, 20, 30)
    out = np.zeros(20, dtype=np.int64)
    out[p] = v
    assert n == nbits and out.tolist() == T4_Z


def test_t4_through_the_codec() -> None:
    codec = create_codec("dither", step=1.0, seed=0)  # integer inputs with step 1 quantize exactly
    x = torch.tensor(T4_Z, dtype=torch.float32)
    payload = codec.encode(x)
    assert codec.analytic_bits(payload) == 68
    assert len(payload) == codec.header_nbytes(1) + 9
    assert torch.equal(codec.decode(payload), x)


@pytest.mark.parametrize("shape", [(20,), (1,), (4, 5), ()])
def test_t4_all_zero_is_33_bits(shape: tuple[int, ...]) -> None:
    for params in ({}, {"subtractive": True}, {"step": 0.5}):
        codec = create_codec("dither", seed=1, **params)
        payload = codec.encode(torch.zeros(shape))
        assert codec.analytic_bits(payload) == 33
        assert len(payload) == codec.header_nbytes(len(shape)) + 5
    assert encode_sparse_levels(np.empty(0, np.int64), np.empty(0, np.int64), 20) == (b"\x80", 1)


def _random_sparse(rng: np.random.Generator, d: int, density: float, s: int) -> np.ndarray:
    z = np.zeros(d, dtype=np.int64)
    mask = rng.random(d) < density
    mag = np.minimum(rng.geometric(0.4, mask.sum()), s)
    z[mask] = mag * rng.choice([-1, 1], mask.sum())
    return z


@pytest.mark.parametrize("seed", range(40))
def test_t4_random_round_trip_matches_reference_and_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 400))
    s = int(rng.choice([1, 2, 15, 300]))
    z = _random_sparse(rng, d, float(rng.choice([0.0, 0.01, 0.1, 0.5, 0.9, 1.0])), s)
    pos, vals = _sparse(z)
    data, nbits = encode_sparse_levels(pos, vals, d)
    assert nbits == sparse_levels_bits(pos, vals, d) == len(_ref_encode(z.tolist()))
    assert _bits(data, nbits) == _ref_encode(z.tolist())
    assert len(data) == math.ceil(nbits / 8)
    p, v, n = decode_sparse_levels(data, d, 2 * s)
    out = np.zeros(d, dtype=np.int64)
    out[p] = v
    assert n == nbits and np.array_equal(out, z)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-6, 6), min_size=1, max_size=120))
def test_source_coder_round_trip_property(z: list[int]) -> None:
    arr = np.array(z, dtype=np.int64)
    pos, vals = _sparse(arr)
    data, nbits = encode_sparse_levels(pos, vals, arr.size)
    assert _bits(data, nbits) == _ref_encode(z)
    p, v, _ = decode_sparse_levels(data, arr.size, 12)
    out = np.zeros(arr.size, dtype=np.int64)
    out[p] = v
    assert np.array_equal(out, arr)


def test_large_sparse_round_trip_and_many_distinct_values() -> None:
    rng = np.random.default_rng(5)
    d = 200_000
    z = np.zeros(d, dtype=np.int64)
    idx = rng.choice(d, 4000, replace=False)
    z[idx] = rng.integers(1, 2**20, idx.size) * rng.choice([-1, 1], idx.size)  # ~4000 distinct values
    pos, vals = _sparse(z)
    data, nbits = encode_sparse_levels(pos, vals, d)
    assert nbits == sparse_levels_bits(pos, vals, d)
    p, v, _ = decode_sparse_levels(data, d, 2**21)
    out = np.zeros(d, dtype=np.int64)
    out[p] = v
    assert np.array_equal(out, z)


def test_rank_transform_matches_brute_force() -> None:
    rng = np.random.default_rng(9)
    for _ in range(30):
        d = int(rng.integers(1, 200))
        n = int(rng.integers(0, d + 1))
        pos = np.sort(rng.choice(d, n, replace=False)).astype(np.int64)
        k = int(rng.integers(1, 12))
        grp = rng.integers(0, k, n).astype(np.int64)
        rank = _ranks_among_unclaimed(pos, grp, k, d)
        brute = np.array([p - np.sum((grp < g) & (pos < p)) for p, g in zip(pos, grp, strict=True)], dtype=np.int64)
        assert np.array_equal(rank, brute)
        assert np.array_equal(_positions_from_ranks(rank, grp, k, d), pos)


def test_golomb_parameter_matches_exact_rule() -> None:
    for total in range(1, 80):
        for n in range(1, total + 1):
            assert golomb_parameter(n, total) == _ref_m(n, total), (n, total)
    assert golomb_parameter(1, 2**31 - 1) == math.ceil(math.log(2 - 1 / (2**31 - 1)) / -math.log1p(-1 / (2**31 - 1)))


def test_small_helpers() -> None:
    x = np.array([0, 1, 2, 3, 4, 7, 8, 2**31 - 1, 2**31, 2**33 - 1])
    assert bit_length(x).tolist() == [int(v).bit_length() for v in x]
    v = np.array([1, -1, 2, -2, 3, -3, 2**31 - 1, -(2**31 - 1)])
    assert zigzag(v).tolist()[:6] == [1, 2, 3, 4, 5, 6]
    assert np.array_equal(unzigzag(zigzag(v)), v)


# --------------------------------------------------------------------------- compressed gossip (CHOCO, ring)
def _ring_gossip(rescale: bool, seed: int, rounds: int = 100, xhat_zero: bool = True) -> tuple[float, float]:
    """CHOCO-gossip on a ring of 8 nodes (weights 1/3), d = 1000, γ = 0.5, η = λ = 0, QSGD s = 16."""
    n, d, gamma = 8, 1000, 0.5
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    xhat = torch.zeros_like(x) if xhat_zero else x.clone()
    codecs = [create_codec("dither", levels=16, rescale=rescale, seed=1000 * seed + i) for i in range(n)]
    start = float((x - x.mean(0)).norm())
    for _ in range(rounds):
        q = torch.stack([codec.decode(codec.encode(x[i] - xhat[i])) for i, codec in enumerate(codecs)])
        xhat = xhat + q
        mixed = (torch.roll(xhat, 1, 0) + xhat + torch.roll(xhat, -1, 0)) / 3
        x = x + gamma * (mixed - xhat)
    return start, float((x - x.mean(0)).norm())


@pytest.mark.parametrize("xhat_zero", [True, False])
def test_t7_gossip_converges_with_rescale(xhat_zero: bool) -> None:
    start, end = _ring_gossip(rescale=True, seed=0, xhat_zero=xhat_zero)
    assert start == pytest.approx(84, abs=3)
    assert end < 1e-3


def test_t7_gossip_diverges_without_rescale() -> None:
    _, end = _ring_gossip(rescale=False, seed=0)
    assert end > 500  # regression guard: the unbiased (unscaled) operator is not contractive enough


# --------------------------------------------------------------------------- codec behaviour
def test_codec_is_unbiased() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, generator=gen)
    x[::7] = 0
    codec = create_codec("dither", seed=8)
    draws = torch.stack([codec.decode(codec.encode(x)).double() for _ in range(3000)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((mean - x.double()).abs() <= 5 * se + 1e-6).all())
    assert bool((draws[:, ::7] == 0).all())


def test_same_seed_same_bytes() -> None:
    x = torch.randn(777)
    for params in ({}, {"subtractive": True}, {"rescale": True}, {"step": 0.01}):
        a = create_codec("dither", seed=42, **params)
        b = create_codec("dither", seed=42, **params)
        seq_a = [a.encode(x) for _ in range(3)]
        assert seq_a == [b.encode(x) for _ in range(3)]
        assert len(set(seq_a)) == 3  # fresh dither per message
        assert create_codec("dither", seed=43, **params).encode(x) != seq_a[0]
    torch.manual_seed(0)
    c1 = create_codec("dither")
    torch.manual_seed(0)
    assert create_codec("dither").encode(x) == c1.encode(x)


def test_rescale_divides_by_tau() -> None:
    x = torch.randn(1000)
    plain, scaled = create_codec("dither", levels=16, seed=2), create_codec("dither", levels=16, rescale=True, seed=2)
    tau = 1 + min(1000 / 16**2, math.sqrt(1000) / 16)
    torch.testing.assert_close(scaled.decode(scaled.encode(x)), plain.decode(plain.encode(x)) / tau)


SHAPES = [(), (1,), (7,), (3, 4, 5), (2, 1, 3, 1, 4), (100, 33), (5000,)]
MODES = [
    {},
    {"levels": 1},
    {"levels": 255},
    {"levels": MAX_LEVELS},
    {"subtractive": True},
    {"rescale": True},
    {"step": 0.05},
    {"step": 0.05, "subtractive": True},
]


@pytest.mark.parametrize("params", MODES)
def test_length_matches_formula_and_bound(params: dict) -> None:
    gen = torch.Generator().manual_seed(6)
    codec = create_codec("dither", seed=3, **params)
    for shape in SHAPES:
        for scale in (1.0, 1e-3):
            x = torch.randn(shape, generator=gen) * scale
            if x.numel() > 10:
                x[x.abs() < 0.5 * scale] = 0
            payload = codec.encode(x)
            bits = codec.analytic_bits(payload)
            assert len(payload) == codec.header_nbytes(len(shape)) + math.ceil(bits / 8)
            assert 8 * (len(payload) - codec.header_nbytes(len(shape))) <= codec.expected_bits(x.numel())
            y = codec.decode(payload)
            assert y.shape == x.shape and y.dtype == x.dtype and bool(torch.isfinite(y).all())


@pytest.mark.parametrize("levels", [1, 15, 1023])
def test_expected_bits_bounds_dense_worst_cases(levels: int) -> None:
    rng = np.random.default_rng(levels)
    for d in (1, 2, 3, 10, 1000, 3000):
        z = rng.integers(-levels, levels + 1, d)
        z[rng.random(d) < 0.2] = levels
        codec = create_codec("dither", step=1.0, seed=0)
        bound = create_codec("dither", levels=levels).expected_bits(d)
        payload = codec.encode(torch.tensor(z, dtype=torch.float32))
        assert 8 * (len(payload) - codec.header_nbytes(1)) <= bound


def test_empty_tensors() -> None:
    codec = create_codec("dither")
    for shape in ((0,), (3, 0)):
        payload = codec.encode(torch.empty(shape))
        assert codec.analytic_bits(payload) == 0 and codec.expected_bits(0) == 0
        assert codec.decode(payload).shape == shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_round_trip_preserves_dtype(dtype: torch.dtype) -> None:
    x = torch.randn(3, 50).to(dtype)
    codec = create_codec("dither", levels=255, seed=0)
    y = codec.decode(codec.encode(x))
    assert y.dtype == dtype and y.shape == x.shape
    delta = float(x.double().norm()) / 255
    assert float((y.double() - x.double()).abs().max()) <= delta * 1.01 + 1e-2 * float(x.double().abs().max())


def test_half_precision_output_saturates_instead_of_overflowing() -> None:
    big = float(torch.finfo(torch.float16).max)
    x = torch.full((100,), big * 0.99, dtype=torch.float16)  # rounding up overshoots 65504 often
    for params in ({}, {"subtractive": True}):
        codec = create_codec("dither", seed=0, **params)
        for _ in range(5):
            y = codec.decode(codec.encode(x))
            assert y.dtype == torch.float16 and bool(torch.isfinite(y).all()) and float(y.abs().max()) <= big
    payload = bytearray(create_codec("dither", seed=0).encode(torch.full((10,), 1e6)))
    payload[6] = 1  # dtype code: float32 -> float16 (a corrupted header)
    y = create_codec("dither").decode(bytes(payload))
    assert y.dtype == torch.float16 and bool(torch.isfinite(y).all())


def test_exact_integer_multiples_round_trip_with_fixed_step() -> None:
    z = torch.randint(-(2**20), 2**20, (500,))
    z[::3] = 0
    codec = create_codec("dither", step=0.5, seed=0)
    x = z.double() * 0.5
    assert torch.equal(codec.decode(codec.encode(x)), x)


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="level range"):
        create_codec("dither", step=1e-6).encode(torch.tensor([1e4, 0.0]))
    with pytest.raises(ValueError, match="exceeds the supported"):
        create_codec("dither").encode(torch.full((10,), 3.0e38))
    with pytest.raises(ValueError, match="non-finite"):
        create_codec("dither").encode(torch.tensor([1.0, float("nan")]))
    y = create_codec("dither", nonfinite="zero", levels=4).decode(
        create_codec("dither", nonfinite="zero", levels=4).encode(torch.tensor([1.0, float("inf"), 0.0]))
    )
    assert y.tolist() == [1.0, 0.0, 0.0]
    assert STEP_MAX_LEVEL == 2**31 - 1


# --------------------------------------------------------------------------- corrupted payloads
def _payload(**params: object) -> tuple[DitherCodec, bytes]:
    codec = create_codec("dither", seed=7, **params)
    x = torch.randn(300, generator=torch.Generator().manual_seed(1))
    x[x.abs() < 1] = 0
    return codec, codec.encode(x)  # type: ignore[return-value]


@pytest.mark.parametrize("params", [{}, {"subtractive": True, "levels": 40}, {"step": 0.1}])
def test_corrupted_bodies_raise_codec_error(params: dict) -> None:
    codec, payload = _payload(**params)
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            codec.decode(payload[:cut])
    for extra in (b"\x00", b"\xff", bytes(9)):
        with pytest.raises(CodecError):
            codec.decode(payload + extra)
    raised = 0
    for i in range(len(payload)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(payload)
            bad[i] ^= mask
            try:
                y = codec.decode(bytes(bad))
            except CodecError:
                raised += 1
            else:  # some flips give another valid stream; it must still decode to finite values
                assert bool(torch.isfinite(y).all())
                assert y.shape == (300,) or i < codec.header_nbytes(1)  # a flipped shape may still be valid
    assert raised > len(payload)


def test_random_bodies_never_crash() -> None:
    rng = np.random.default_rng(0)
    codec, payload = _payload()
    head = codec.header_nbytes(1)
    raised = 0
    for _ in range(400):
        body = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        try:
            y = codec.decode(payload[:head] + body)
        except CodecError:
            raised += 1
        else:
            assert y.shape == (300,) and bool(torch.isfinite(y).all())
    assert raised > 300


def _forge(codec: DitherCodec, numel: int, params: tuple, scale: float, coded: str) -> bytes:
    """A payload with the given parameter block, scale and coded bit string (zero-padded)."""
    header = codec.encode(torch.zeros(numel))[: codec.header_nbytes(1) - struct.calcsize("<HBQ")]
    bits = coded + "0" * (-len(coded) % 8)
    body = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    return header + struct.pack("<HBQ", *params) + struct.pack("<f", scale) + body


def test_forged_payloads_raise_codec_error() -> None:
    codec = create_codec("dither")
    g = _ref_gamma
    ok = _forge(codec, 20, (15, 0, 0), 1.0, _ref_encode(T4_Z))
    assert codec.decode(ok).shape == (20,)
    cases = {
        "levels 0": _forge(codec, 20, (0, 0, 0), 1.0, "1"),
        "levels too big": _forge(codec, 20, (MAX_LEVELS + 1, 0, 0), 1.0, "1"),
        "unknown flag": _forge(codec, 20, (15, 8, 0), 1.0, "1"),
        "rescale + fixed step": _forge(codec, 20, (15, 6, 0), 1.0, "1"),
        "seed without subtractive": _forge(codec, 20, (15, 0, 5), 1.0, "1"),
        "nan scale": _forge(codec, 20, (15, 0, 0), float("nan"), "1"),
        "negative scale": _forge(codec, 20, (15, 0, 0), -1.0, "1"),
        "zero fixed step": _forge(codec, 20, (15, 4, 0), 0.0, "1"),
        "zero scale, nonzero levels": _forge(codec, 20, (15, 0, 0), 0.0, _ref_encode(T4_Z)),
        "K too large": _forge(codec, 20, (15, 0, 0), 1.0, g(22) + "1" * 80),
        "K more than the bits": _forge(codec, 20, (15, 0, 0), 1.0, g(10) + "1"),
        "zigzag beyond 2s": _forge(codec, 20, (15, 0, 0), 1.0, g(2) + g(31) + g(1) + "1"),
        "count beyond d": _forge(codec, 20, (15, 0, 0), 1.0, g(2) + g(1) + g(21) + "1" * 21),
        "gap beyond d": _forge(codec, 20, (15, 0, 0), 1.0, g(2) + g(1) + g(1) + _ref_golomb(20, 14)),
        "non-canonical order": _forge(
            codec, 20, (15, 0, 0), 1.0, g(3) + g(1) + g(1) + _ref_golomb(0, 14) + g(2) + g(1) + _ref_golomb(0, 13)
        ),
        "nonzero padding": _forge(codec, 20, (15, 0, 0), 1.0, "1" + "0001"),
        "empty body": _forge(codec, 20, (15, 0, 0), 1.0, ""),
        "unterminated gamma": _forge(codec, 20, (15, 0, 0), 1.0, "0000000"),
        "unterminated unary": _forge(codec, 20, (15, 0, 0), 1.0, g(2) + g(1) + g(1) + "0" * 11),
        "long gamma prefix": _forge(codec, 20, (15, 0, 0), 1.0, "0" * 200 + "1" * 201),
    }
    for what, payload in cases.items():
        with pytest.raises(CodecError):
            codec.decode(payload)
            pytest.fail(what)
        with pytest.raises(CodecError):
            codec.analytic_bits(payload)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_subtractive_dither() -> None:
    x = torch.randn(10_000)
    codec = create_codec("dither", subtractive=True, seed=1)
    payload = codec.encode(x)
    assert torch.equal(codec.decode(payload, "cuda").cpu(), codec.decode(payload))
    gpu_payload = create_codec("dither", subtractive=True, seed=1).encode(x.cuda())
    assert gpu_payload == payload
    q = create_codec("dither", seed=1)
    y = q.decode(q.encode(x.cuda()), "cuda")
    assert y.is_cuda and float((y.cpu() - x).abs().max()) <= float(x.norm()) / 15
