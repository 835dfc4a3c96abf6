"""Tests of the ``bird`` codec against the method in docs/papers.md (BIRD), plus wire robustness."""

from __future__ import annotations

import math
import random
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_split.codecs import CodecError, create_codec, decode_payload
from fl_split.codecs.bird import FLAG_BITMAP, FLAG_F16, FLAG_VALUES, BirdCodec, default_block, keep_count

# ----------------------------------------------------------------------------- helpers


def body_of(codec: BirdCodec, payload: bytes, ndim: int) -> bytes:
    """The body of ``payload`` (everything after the common header and the parameter block)."""
    return payload[codec.header_nbytes(ndim) :]


def head_of(codec: BirdCodec, payload: bytes, ndim: int) -> tuple[int, int, float | None]:
    """``(flags, m, s)`` of a sampled body (``s`` is ``None`` in values mode)."""
    body = body_of(codec, payload, ndim)
    flags, m = struct.unpack_from("<BI", body)
    s = None if flags & FLAG_VALUES else struct.unpack_from("<f", body, 5)[0]
    return flags, m, s


def block_norms(x: torch.Tensor, block: int, norm: str = "l1") -> torch.Tensor:
    """Norms of the ``block``-element blocks of ``x`` (length divisible by ``block``)."""
    return torch.linalg.vector_norm(x.reshape(-1, block), ord=1 if norm == "l1" else 2, dim=1)


def patched(payload: bytes, offset: int, fmt: str, *values: object) -> bytes:
    """``payload`` with ``struct.pack(fmt, *values)`` written at ``offset``."""
    out = bytearray(payload)
    struct.pack_into("<" + fmt, out, offset, *values)
    return bytes(out)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def assert_size_formula(codec: BirdCodec, x: torch.Tensor, payload: bytes) -> None:
    """``len(payload) == header + ceil(analytic_bits / 8)`` and the body is within ``expected_bits``."""
    bits = codec.analytic_bits(payload)
    assert len(payload) == codec.header_nbytes(x.ndim) + math.ceil(bits / 8)
    assert 8 * len(body_of(codec, payload, x.ndim)) <= codec.expected_bits(x.numel()) + 7


# ----------------------------------------------------------------------------- worked example


@pytest.mark.parametrize("seed", range(10))
def test_worked_example(seed: int) -> None:
    x = torch.ones(8, 4)
    codec = BirdCodec(keep=0.25, block=4, norm="l1", mode="sign", seed=seed)
    payload = codec.encode(x)
    x_hat = codec.decode(payload)

    rows = x_hat.abs().sum(1)
    assert int((rows == 16.0).sum()) == 2  # two rows of 4.0
    assert int((rows == 0.0).sum()) == 6
    assert set(x_hat.unique().tolist()) == {0.0, 4.0}
    assert float(x_hat.abs().sum()) == 32.0 == float(x.abs().sum())

    flags, m, s = head_of(codec, payload, 2)
    assert (flags, m, s) == (FLAG_BITMAP, 2, 16.0)  # K = m = 2, c = 8/2 = 4, s = c*M = 16
    assert len(body_of(codec, payload, 2)) == 11  # 9 + 1-byte bitmap + 1 byte of signs (vs 128 dense)
    assert codec.analytic_bits(payload) == 88
    # The default block of an [8, 4] tensor is its row, 4: same bytes.
    assert BirdCodec(keep=0.25, seed=seed).encode(x) == payload


# ----------------------------------------------------------------------------- size


@pytest.mark.parametrize(
    ("mode", "values_dtype", "body_bytes"),
    [("sign", "f32", 9 + 16 + 936), ("values", "f32", 5 + 16 + 29_952), ("values", "f16", 5 + 16 + 14_976)],
)
def test_size_conv_like(mode: str, values_dtype: str, body_bytes: int) -> None:
    shape = (128, 64, 3, 3)
    x = torch.where(randn(*shape, seed=1) < 0, -1.0, 1.0)  # every |x| = 1
    codec = BirdCodec(keep=0.1, mode=mode, values_dtype=values_dtype, seed=0)  # default block 64*3*3 = 576
    payload = codec.encode(x)
    flags, m, _ = head_of(codec, payload, 4)
    assert m == 13  # ceil(0.1 * 128)
    assert flags & FLAG_BITMAP  # ceil(128/8) = 16 bytes < 4m = 52
    assert len(payload) - codec.header_nbytes(4) == body_bytes
    assert_size_formula(codec, x, payload)
    if mode == "sign":
        assert body_bytes == 961
        assert round(8 * body_bytes / x.numel(), 3) == 0.104  # bits per element
        assert round(4 * x.numel() / body_bytes, 1) == 306.9  # vs 294,912 bytes of float32
    elif values_dtype == "f32":
        assert body_bytes == 29_973


# ----------------------------------------------------------------------------- unbiasedness

R_UNB, B_UNB, KEEP_UNB = 64, 16, 0.25
X_UNB = randn(R_UNB * B_UNB, seed=2024)  # one fixed x ~ N(0, 1)


def _trials(norm: str, mode: str, trials: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode ``trials`` encodes of ``X_UNB``, one codec (seed) per trial: ``(x_hat [T, N], m [T], s [T])``."""
    x_hat = torch.empty(trials, X_UNB.numel())
    ms = torch.empty(trials, dtype=torch.int64)
    ss = torch.zeros(trials, dtype=torch.float64)
    for t in range(trials):
        codec = BirdCodec(keep=KEEP_UNB, block=B_UNB, norm=norm, mode=mode, seed=t)
        payload = codec.encode(X_UNB)
        x_hat[t] = codec.decode(payload)
        _, ms[t], s = head_of(codec, payload, 1)
        ss[t] = s or 0.0
    return x_hat, ms, ss


def _within_se(samples: torch.Tensor, target: torch.Tensor, k: float = 5.0) -> None:
    """Every column mean of ``samples`` [T, ...] lies within ``k`` empirical standard errors of ``target``."""
    samples = samples.double()
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    assert bool((se > 0).all())
    z = (mean - target.double()).abs() / se
    assert float(z.max()) < k, f"worst deviation {float(z.max()):.2f} standard errors"


@pytest.fixture(scope="module")
def sign_l1_trials() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _trials("l1", "sign", 20_000)


@pytest.fixture(scope="module")
def values_l1_trials() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # T = 8,000 (not 20,000) keeps the file under ~20 s. The element and block criteria are relative to
    # the empirical standard error, so they stay valid 5-sigma tests at any T; the mean norm ratio
    # (single-draw sd about 0.09) has an SE of 0.001, so its +-0.005 band is still 5 SE wide.
    return _trials("l1", "values", 8_000)


def test_unbiased_total_l1_norm(sign_l1_trials: tuple) -> None:
    x_hat, _, _ = sign_l1_trials
    ratio = x_hat.abs().sum(1).double() / float(X_UNB.abs().sum())
    assert abs(float(ratio.mean()) - 1.0) < 0.005
    assert 0.05 < float(ratio.std()) < 0.13  # single-draw relative sd (the spec's simulation: 0.087)


def test_stage_counts(sign_l1_trials: tuple) -> None:
    _, ms, ss = sign_l1_trials
    norms = block_norms(X_UNB, B_UNB)
    top = float(norms.max())
    assert bool((ms == 16).all())  # K = ceil(0.25 * 64), and |S1| > K in every draw
    s1 = torch.round(ss * ms / top)  # s = (|S1| / m) * M
    assert torch.allclose(s1, ss * ms / top, atol=1e-3)
    expected = float(norms.sum()) / top
    assert 35 < expected < 50  # "about 42 of 64"
    assert abs(float(s1.mean()) - expected) < 0.01 * expected


def test_unbiased_block_norms_sign_l1(sign_l1_trials: tuple) -> None:
    x_hat, _, _ = sign_l1_trials
    _within_se(x_hat.view(-1, R_UNB, B_UNB).abs().sum(-1), block_norms(X_UNB, B_UNB))


def test_element_means_sign_l1(sign_l1_trials: tuple) -> None:
    x_hat, _, _ = sign_l1_trials
    target = torch.where(X_UNB < 0, -1.0, 1.0) * block_norms(X_UNB, B_UNB).repeat_interleave(B_UNB) / B_UNB
    _within_se(x_hat, target)
    # Sign mode is not element-wise unbiased: the means are the block means, far from x itself.
    assert float((x_hat.double().mean(0) - X_UNB.double()).abs().max()) > 0.5


def test_unbiased_values_mode(values_l1_trials: tuple) -> None:
    x_hat, ms, _ = values_l1_trials
    assert bool((ms == 16).all())
    _within_se(x_hat, X_UNB)  # E[x_hat] = x
    _within_se(x_hat.view(-1, R_UNB, B_UNB).abs().sum(-1), block_norms(X_UNB, B_UNB))
    ratio = x_hat.abs().sum(1).double() / float(X_UNB.abs().sum())
    assert abs(float(ratio.mean()) - 1.0) < 0.005


def test_unbiased_block_norms_l2() -> None:
    # T = 5,000 rather than 20,000 to keep the file fast. The criterion is relative to the empirical
    # standard error, so it stays a valid 5-sigma test at any T (5,000 draws are ample for the CLT).
    x_hat, ms, ss = _trials("l2", "sign", 5_000)
    assert bool((ms == 16).all())
    norms = block_norms(X_UNB, B_UNB, "l2")
    _within_se(torch.linalg.vector_norm(x_hat.view(-1, R_UNB, B_UNB), dim=-1), norms)
    target = torch.where(X_UNB < 0, -1.0, 1.0) * norms.repeat_interleave(B_UNB) / math.sqrt(B_UNB)
    _within_se(x_hat, target)
    s1 = torch.round(ss * ms / float(norms.max()))
    expected = float(norms.sum() / norms.max())
    assert abs(float(s1.mean()) - expected) < 0.01 * expected


# ----------------------------------------------------------------------------- the rest


@pytest.mark.parametrize("shape", [(1000,), (37, 11), (4, 8, 5, 5), ()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_keep_one_is_bit_identical(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = randn(*shape, seed=3, dtype=dtype)
    if x.numel() >= 4 and dtype == torch.float32:
        x.view(-1)[:4] = torch.tensor([-0.0, 1e-40, -1.8e19, 0.0])  # signed zero, subnormal, huge (limit 2**64)
    codec = BirdCodec(keep=1.0, seed=0)
    payload = codec.encode(x)
    assert len(payload) == codec.header_nbytes(x.ndim) + 4 * x.numel()
    x_hat = codec.decode(payload)
    assert x_hat.dtype == dtype and x_hat.shape == x.shape
    bits = torch.int16 if dtype != torch.float32 else torch.int32
    assert torch.equal(x_hat.view(bits), x.view(bits))
    assert codec.analytic_bits(payload) == codec.expected_bits(x.numel()) == 32 * x.numel()
    assert torch.equal(codec.support(payload), torch.ones(shape, dtype=torch.bool))


@pytest.mark.parametrize(("mode", "body_bytes"), [("sign", 9), ("values", 5)])
def test_zero_tensor(mode: str, body_bytes: int) -> None:
    x = torch.zeros(8, 4)
    codec = BirdCodec(keep=0.25, mode=mode, seed=0)
    payload = codec.encode(x)
    flags, m, s = head_of(codec, payload, 2)
    assert m == 0 and flags == (FLAG_VALUES if mode == "values" else 0) and s in (None, 0.0)
    assert len(body_of(codec, payload, 2)) == body_bytes
    x_hat = codec.decode(payload)
    assert torch.equal(x_hat, torch.zeros(8, 4))
    assert_size_formula(codec, x, payload)
    assert not bool(codec.support(payload).any())


def test_argmax_block_kept_and_m_at_least_one() -> None:
    rows, block, keep = 32, 8, 0.15
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(rows, block, generator=g) * torch.exp(1.5 * torch.randn(rows, 1, generator=g))).reshape(-1)
    norms = block_norms(x, block)
    top, argmax = float(norms.max()), int(norms.argmax())
    k = keep_count(keep, rows)
    assert k == 5
    regimes = {"capped": 0, "uncapped": 0}
    for seed in range(200):
        codec = BirdCodec(keep=keep, block=block, seed=seed)
        payload = codec.encode(x)
        _, m, s = head_of(codec, payload, 1)
        assert s is not None
        n1 = round(s * m / top)
        assert 1 <= m == min(n1, k)
        kept = codec.support(payload).view(rows, block).all(1)
        assert int(kept.sum()) == m
        if n1 <= k:
            regimes["uncapped"] += 1
            assert bool(kept[argmax])
            assert math.isclose(s, top, rel_tol=1e-6)  # c = 1
        else:
            regimes["capped"] += 1
    assert min(regimes.values()) > 20  # both branches were exercised


def test_same_seed_same_bytes_and_generator_advances() -> None:
    x = randn(16, 16, seed=4)
    first = BirdCodec(keep=0.25, seed=7)
    p1, p2 = first.encode(x), first.encode(x)
    assert p1 != p2  # successive encodes advance the generator
    second = BirdCodec(keep=0.25, seed=7)
    assert (second.encode(x), second.encode(x)) == (p1, p2)
    assert BirdCodec(keep=0.25, seed=8).encode(x) != p1
    torch.manual_seed(123)
    a = BirdCodec(keep=0.25).encode(x)
    torch.manual_seed(123)
    assert BirdCodec(keep=0.25).encode(x) == a  # seed=None draws from torch's global RNG


# ----------------------------------------------------------------------------- corruption (spec 4.8)

X_CORRUPT = randn(64 * 16, seed=5)


def _payloads() -> dict[str, tuple[BirdCodec, bytes]]:
    """A bitmap-indexed sign payload, a list-indexed sign payload and a values payload."""
    out = {}
    for name, keep, mode in [("bitmap", 0.25, "sign"), ("list", 2 / 64, "sign"), ("values", 0.25, "values")]:
        codec = BirdCodec(keep=keep, block=16, mode=mode, seed=11)
        out[name] = (codec, codec.encode(X_CORRUPT))
    return out


PAYLOADS = _payloads()
BODY = BirdCodec().header_nbytes(1)  # body offset of a 1-D payload


def test_corruption_fixtures_cover_both_index_encodings() -> None:
    assert head_of(*PAYLOADS["bitmap"], 1)[:2] == (FLAG_BITMAP, 16)
    assert head_of(*PAYLOADS["list"], 1)[:2] == (0, 2)  # ceil(64/8) = 8 bytes is not < 4m = 8
    assert head_of(*PAYLOADS["values"], 1)[:2] == (FLAG_BITMAP | FLAG_VALUES, 16)
    for codec, payload in PAYLOADS.values():
        assert torch.isfinite(codec.decode(payload)).all()


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_wrong_length_rejected(name: str) -> None:
    codec, payload = PAYLOADS[name]
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            codec.decode(payload[:cut])
    with pytest.raises(CodecError, match="trailing"):
        codec.decode(payload + b"\x00")


def _corrupt(name: str, mutate: str) -> bytes:
    _, payload = PAYLOADS[name]
    idx = BODY + 9  # first index byte (sign mode)
    mutations = {
        "m > R": lambda p: patched(p, BODY + 1, "I", 65),
        "m huge": lambda p: patched(p, BODY + 1, "I", 2**32 - 1),
        "popcount < m": lambda p: patched(p, BODY + 1, "I", 17),
        "popcount > m": lambda p: patched(p, BODY + 1, "I", 15),
        "bitmap bit flipped": lambda p: p[:idx] + bytes([p[idx] ^ 0x01]) + p[idx + 1 :],
        "not ascending": lambda p: patched(p, idx, "II", *reversed(struct.unpack_from("<II", p, idx))),
        "duplicate": lambda p: patched(p, idx + 4, "I", struct.unpack_from("<I", p, idx)[0]),
        "index >= R": lambda p: patched(p, idx + 4, "I", 64),
        "index 2**32-1": lambda p: patched(p, idx + 4, "I", 2**32 - 1),
        "unknown flag": lambda p: patched(p, BODY, "B", p[BODY] | 0x08),
        "f16 without values": lambda p: patched(p, BODY, "B", p[BODY] | FLAG_F16),
        "bitmap flag flipped": lambda p: patched(p, BODY, "B", p[BODY] ^ FLAG_BITMAP),
        "s nan": lambda p: patched(p, BODY + 5, "f", float("nan")),
        "s inf": lambda p: patched(p, BODY + 5, "f", float("inf")),
        "s negative": lambda p: patched(p, BODY + 5, "f", -1.0),
        "value nan": lambda p: patched(p, len(p) - 4, "f", float("nan")),
        "value inf": lambda p: patched(p, len(p) - 4, "f", float("-inf")),
        "norm code": lambda p: patched(p, BODY - 1, "B", 2),
        "values flag cleared": lambda p: patched(p, BODY, "B", p[BODY] & ~FLAG_VALUES),
    }
    return mutations[mutate](payload)


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("bitmap", "m > R", "exceeds"),
        ("bitmap", "m huge", "exceeds"),
        ("bitmap", "popcount < m", "bits set"),
        ("bitmap", "popcount > m", "bits set"),
        ("bitmap", "bitmap bit flipped", "bits set"),
        ("list", "m > R", "exceeds"),
        ("list", "not ascending", "ascending"),
        ("list", "duplicate", "ascending"),
        ("list", "index >= R", "out of range"),
        ("list", "index 2**32-1", "out of range"),
        ("bitmap", "unknown flag", "unknown flag"),
        ("bitmap", "f16 without values", "float16"),
        ("bitmap", "bitmap flag flipped", "index encoding"),
        ("list", "bitmap flag flipped", "index encoding"),
        ("bitmap", "s nan", "scale"),
        ("bitmap", "s inf", "scale"),
        ("bitmap", "s negative", "scale"),
        ("values", "value nan", "NaN"),
        ("values", "value inf", "NaN or Inf"),
        ("bitmap", "norm code", "norm code"),
        ("values", "values flag cleared", None),
    ],
)
def test_corruption_rejected(name: str, mutate: str, message: str | None) -> None:
    codec, _ = PAYLOADS[name]
    bad = _corrupt(name, mutate)
    with pytest.raises(CodecError, match=message):
        codec.decode(bad)
    if mutate not in ("value nan", "value inf", "values flag cleared"):  # the head itself is bad
        with pytest.raises(CodecError):
            codec.analytic_bits(bad)
        with pytest.raises(CodecError):
            codec.support(bad)


def test_other_codec_payload_rejected() -> None:
    payload = create_codec("none").encode(X_CORRUPT)
    with pytest.raises(CodecError, match="codec id"):
        BirdCodec().decode(payload)


def test_random_byte_corruption_never_crashes_or_gives_nan() -> None:
    rng = random.Random(0)
    outcomes = {"rejected": 0, "decoded": 0}
    for codec, payload in PAYLOADS.values():
        for _ in range(300):
            bad = bytearray(payload)
            for _ in range(rng.randint(1, 3)):
                bad[rng.randrange(BODY, len(bad))] = rng.randrange(256)
            try:
                x_hat = codec.decode(bytes(bad))
            except CodecError:
                outcomes["rejected"] += 1
            else:
                outcomes["decoded"] += 1
                assert x_hat.shape == X_CORRUPT.shape and bool(torch.isfinite(x_hat).all())
    assert min(outcomes.values()) > 0


# ----------------------------------------------------------------------------- sizes, shapes, dtypes, devices

SHAPES_AND_BLOCKS = [
    ((1000,), None),  # B = 64, short last block of 40
    ((37, 11), None),  # B = 11
    ((4, 8, 5, 5), None),  # B = 200
    ((4, 8, 5, 5), "spatial"),  # B = 25
    ((3, 7), 5),  # short last block of 1
    ((2, 3, 4, 5), 7),  # short last block of 1
    ((5000,), 3),  # R = 1667
    ((1,), None),
    ((), None),
]


@pytest.mark.parametrize(("shape", "block"), SHAPES_AND_BLOCKS)
@pytest.mark.parametrize(
    ("mode", "norm", "values_dtype"),
    [("sign", "l1", "f32"), ("sign", "l2", "f32"), ("values", "l1", "f32"), ("values", "l2", "f16")],
)
def test_measured_size_matches_formula(
    shape: tuple[int, ...], block: int | str | None, mode: str, norm: str, values_dtype: str
) -> None:
    x = randn(*shape, seed=6) * torch.exp(randn(*shape, seed=7))
    x.view(-1)[-1] = 3 * x.abs().max()  # make the (possibly short) last block likely to be kept
    seen_last = False
    for keep in (0.01, 0.1, 0.5, None):
        for seed in range(3):
            codec = BirdCodec(keep=keep, block=block, norm=norm, mode=mode, values_dtype=values_dtype, seed=seed)
            payload = codec.encode(x)
            assert_size_formula(codec, x, payload)
            x_hat = codec.decode(payload)
            assert x_hat.shape == x.shape and bool(torch.isfinite(x_hat).all())
            support = codec.support(payload)
            b = min(default_block(tuple(shape), block), x.numel())
            seen_last |= bool(support.reshape(-1)[-1]) and x.numel() % b != 0
            _check_reconstruction(x, x_hat, support, b, norm, mode, head_of(codec, payload, x.ndim)[2])
    if (shape, block) in [((1000,), None), ((3, 7), 5), ((2, 3, 4, 5), 7)]:
        assert seen_last  # a short last block was kept at least once


def _check_reconstruction(
    x: torch.Tensor, x_hat: torch.Tensor, support: torch.Tensor, block: int, norm: str, mode: str, s: float | None
) -> None:
    """Kept blocks decode to norm s (sign mode) or to a positive multiple of x_b (values mode); the rest to 0."""
    flat, flat_hat, keep = x.reshape(-1), x_hat.reshape(-1), support.reshape(-1)
    assert bool((flat_hat[~keep] == 0).all())
    order = 1 if norm == "l1" else 2
    norms_hat = []
    for start in range(0, flat.numel(), block):
        xb, hb = flat[start : start + block], flat_hat[start : start + block]
        if not bool(keep[start]):
            continue
        norms_hat.append(float(torch.linalg.vector_norm(hb, ord=order)))
        if mode == "sign":
            assert torch.equal(hb < 0, xb < 0)
            assert torch.allclose(hb.abs(), hb.abs()[0].expand_as(hb))
        else:
            big = xb.abs() > 1e-3 * xb.abs().max()  # f16 values lose relative precision near 0
            ratio = hb[big].double() / xb[big].double()
            assert bool((ratio > 0).all()) and torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=2e-3)
    if s is not None:
        assert all(math.isclose(n, s, rel_tol=1e-5) for n in norms_hat)
    elif norms_hat:  # values mode: every kept block has the same norm c*M
        assert max(norms_hat) <= min(norms_hat) * (1 + 3e-3)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple),
    keep=st.one_of(st.none(), st.floats(0.01, 1.0)),
    block=st.one_of(st.none(), st.just("spatial"), st.integers(1, 40)),
    mode=st.sampled_from(["sign", "values"]),
    seed=st.integers(0, 2**20),
)
def test_roundtrip_properties(
    shape: tuple[int, ...], keep: float | None, block: int | str | None, mode: str, seed: int
) -> None:
    x = randn(*shape, seed=seed)
    codec = BirdCodec(keep=keep, block=block, mode=mode, seed=seed)
    payload = codec.encode(x)
    assert_size_formula(codec, x, payload)
    x_hat = codec.decode(payload)
    assert x_hat.shape == x.shape and bool(torch.isfinite(x_hat).all())
    if keep is None or keep < 1:
        m = head_of(codec, payload, x.ndim)[1]
        assert m >= 1  # x is nonzero
        assert m <= keep_count(keep, -(-x.numel() // min(default_block(shape, block), x.numel())))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", ["sign", "values"])
def test_input_dtypes_roundtrip(dtype: torch.dtype, mode: str) -> None:
    x = randn(6, 5, 4, seed=8, dtype=dtype)
    payload = BirdCodec(keep=0.3, mode=mode, seed=1).encode(x)
    reference = BirdCodec(keep=0.3, mode=mode, seed=1).encode(x.float())
    codec = BirdCodec()
    assert body_of(codec, payload, 3) == body_of(codec, reference, 3)  # the body sees x.float()
    x_hat = codec.decode(payload)
    assert x_hat.dtype == dtype and x_hat.shape == x.shape
    assert torch.equal(x_hat, codec.decode(reference).to(dtype))


def test_decode_device_and_dispatch() -> None:
    x = randn(10, 10, seed=9)
    codec = BirdCodec(keep=0.2, seed=2)
    payload = codec.encode(x)
    on_cpu = codec.decode(payload, device="cpu")
    assert on_cpu.device.type == "cpu"
    assert torch.equal(on_cpu, codec.decode(payload, device=torch.device("cpu")))
    assert torch.equal(on_cpu, decode_payload(payload))  # a default instance decodes any bird payload
    assert torch.equal(on_cpu, create_codec("bird").decode(bytearray(payload)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["sign", "values"])
def test_cuda_matches_cpu(mode: str) -> None:
    # Small integers make every block norm exact, so the bytes cannot depend on the reduction order.
    x = torch.randint(-4, 5, (32, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    cpu = BirdCodec(keep=0.2, block="spatial", mode=mode, seed=3).encode(x)
    gpu = BirdCodec(keep=0.2, block="spatial", mode=mode, seed=3).encode(x.cuda())
    assert cpu == gpu
    codec = BirdCodec()
    assert torch.equal(codec.decode(gpu, device="cuda").cpu(), codec.decode(cpu))
    assert torch.equal(codec.support(gpu, device="cuda").cpu(), codec.support(cpu))


# ----------------------------------------------------------------------------- parameters and edge cases


def test_defaults_and_config() -> None:
    codec = create_codec("bird", seed=0)
    assert isinstance(codec, BirdCodec) and codec.codec_id == 11
    assert codec.config() == {
        "keep": 0.1,
        "block": None,
        "norm": "l1",
        "mode": "sign",
        "values_dtype": "f32",
        "seed": 0,
        "nonfinite": "raise",
    }
    assert "BirdCodec(keep=0.1" in repr(codec)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"keep": 0.0}, r"\(0, 1\]"),
        ({"keep": 1.5}, r"\(0, 1\]"),
        ({"keep": -0.1}, r"\(0, 1\]"),
        ({"keep": True}, r"\(0, 1\]"),
        ({"keep": "0.1"}, r"\(0, 1\]"),
        ({"block": 0}, r"\[1, 4294967295\]"),
        ({"block": 2**32}, r"\[1, 4294967295\]"),
        ({"block": 2.5}, r"\[1, 4294967295\]"),
        ({"block": "rows"}, "spatial"),
        ({"norm": "l3"}, "'l1' or 'l2'"),
        ({"mode": "topk"}, "'sign' or 'values'"),
        ({"values_dtype": "bf16"}, "'f32' or 'f16'"),
        ({"seed": -1}, "seed"),
        ({"nonfinite": "keep"}, "nonfinite"),
    ],
)
def test_invalid_parameters(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BirdCodec(**params)


def test_default_block_rule() -> None:
    assert default_block((128, 64, 3, 3)) == 576
    assert default_block((128, 64, 3, 3), "spatial") == 9
    assert default_block((5, 7)) == default_block((5, 7), "spatial") == 7
    assert default_block((2, 3, 4), "spatial") == 4
    assert default_block((10,)) == default_block(()) == 64
    assert default_block((10, 3), 5) == 5
    assert [keep_count(0.3, 10), keep_count(0.1, 128), keep_count(0.001, 10), keep_count(None, 7)] == [3, 13, 1, 7]


def test_keep_none_runs_stage_one_only() -> None:
    x = randn(40, 8, seed=10)
    top = float(block_norms(x, 8).max())
    for seed in range(20):
        codec = BirdCodec(keep=None, seed=seed)
        _, m, s = head_of(codec, codec.encode(x), 2)
        assert m >= 1 and s == pytest.approx(top, rel=1e-6)  # c = 1, s = M


def test_sign_of_zero_is_positive_and_short_block_exact() -> None:
    x = torch.tensor([0.0] * 8 + [-3.0, 0.0])  # blocks of 4, 4 and 2; only the short last one is nonzero
    for norm in ("l1", "l2"):
        codec = BirdCodec(keep=1 / 3, block=4, norm=norm, seed=0)
        payload = codec.encode(x)
        _, m, s = head_of(codec, payload, 1)
        x_hat = codec.decode(payload)
        assert m == 1 and s == 3.0  # S1 = S2 = {last block}, c = 1, s = M = 3
        per = 3.0 / (2.0 if norm == "l1" else math.sqrt(2.0))  # s / len or s / sqrt(len): norm exactly 3
        assert torch.equal(x_hat, torch.tensor([0.0] * 8 + [-per, per]))  # sign(0) decodes as +


def test_f16_values_overflow_raises() -> None:
    x = torch.zeros(4, 4)
    x[0, 0] = 1e5
    with pytest.raises(ValueError, match="overflows"):
        BirdCodec(keep=0.25, mode="values", values_dtype="f16", seed=0).encode(x)
    assert BirdCodec(keep=0.25, mode="values", seed=0).encode(x)  # f32 holds it


def test_extreme_magnitudes() -> None:
    signs = torch.where(randn(4, 16, seed=11) < 0, -1.0, 1.0)
    # float32 l2 squares overflow (1e19: 16 * 1e38 > 3.4e38) or underflow (1e-30): the codec redoes the
    # norms in float64. keep=None gives c = 1, so equal-magnitude blocks decode exactly.
    for scale, norm, mode in [
        (1e19, "l2", "sign"),
        (1e-30, "l2", "sign"),
        (1.8e19, "l1", "values"),
        (1e-44, "l1", "sign"),
    ]:
        x = signs * scale
        codec = BirdCodec(keep=None, norm=norm, mode=mode, seed=0)
        payload = codec.encode(x)
        assert head_of(codec, payload, 2)[1] == 4
        x_hat = codec.decode(payload)
        assert bool(torch.isfinite(x_hat).all())
        if scale != 1e-44:  # subnormal: only the signs survive exactly
            assert torch.allclose(x_hat, x, rtol=1e-5, atol=0)
        assert torch.equal(x_hat < 0, x < 0)
    with pytest.raises(ValueError, match="2\\*\\*64"):  # beyond the codecs' magnitude limit
        BirdCodec(keep=0.5, seed=0).encode(signs * 3e37)


def test_nonfinite_zero_policy() -> None:
    x = torch.ones(4, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        BirdCodec(seed=0).encode(x)
    payload = BirdCodec(keep=1.0, nonfinite="zero", seed=0).encode(x)
    assert float(BirdCodec().decode(payload)[1, 2]) == 0.0


def test_empty_tensor() -> None:
    codec = BirdCodec(seed=0)
    payload = codec.encode(torch.empty(0, 5))
    assert len(payload) == codec.header_nbytes(2) and codec.analytic_bits(payload) == 0
    assert codec.decode(payload).shape == (0, 5)
