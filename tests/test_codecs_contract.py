"""The codec contract, for every registered codec: round trip, sizes, dtypes, devices, seeds."""

from __future__ import annotations

import math

import pytest
import torch

from fl_split.codecs import Codec, create_codec, decode_payload, list_codecs

ALL = list_codecs()
SHAPES = [(1000,), (16, 33), (4, 8, 5, 5)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
#: codecs that only accept non-negative input with their defaults
NON_NEGATIVE = {"ms"}


def sample(name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if name in NON_NEGATIVE:
        x = torch.relu(x)
    return x.to(dtype)


def make(name: str) -> Codec:
    params = {"seed": 123} if "seed" in _params(name) else {}
    if name == "ms":
        params["keep"] = 0.05
    return create_codec(name, **params)


def _params(name: str) -> list[str]:
    from fl_split.codecs import codec_parameters

    return codec_parameters(name)


def test_all_issue_codecs_are_registered() -> None:
    expected = {"none", "fp16", "bf16", "quant", "qsgd", "topk", "randk", "randtopk", "ms", "sign", "powersgd"}
    assert expected <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_defaults_construct(name: str) -> None:
    codec = create_codec(name)
    assert codec.name == name
    assert isinstance(codec.encode(sample(name, (64, 8))), bytes)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_preserves_shape_and_dtype(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    codec = make(name)
    x = sample(name, shape, dtype)
    payload = codec.encode(x)
    y = codec.decode(payload)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device.type == "cpu"
    assert bool(torch.isfinite(y).all())
    z = decode_payload(payload)
    assert torch.equal(z, y) or name in {"powersgd"}  # powersgd: same math, allclose below
    torch.testing.assert_close(z.float(), y.float())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [*SHAPES, (7,), (3, 1, 11)])
def test_measured_size_is_analytic_plus_header(name: str, shape: tuple[int, ...]) -> None:
    codec = make(name)
    x = sample(name, shape)
    if name == "ms" and math.floor(codec.keep * x.numel()) < 1:  # type: ignore[attr-defined]
        pytest.skip("ms needs k >= 1")
    payload = codec.encode(x)
    analytic = codec.analytic_bits(payload)
    assert len(payload) == codec.header_nbytes(x.ndim) + math.ceil(analytic / 8)
    if codec.fixed_size:
        expected = (
            codec.expected_bits(x.numel(), tuple(x.shape)) if name == "powersgd" else codec.expected_bits(x.numel())
        )
        assert analytic == expected
    else:
        assert analytic <= codec.expected_bits(x.numel())


def test_none_is_exact_and_dense_sizes() -> None:
    x = torch.randn(3, 5, 7)
    for name, itemsize in (("none", 4), ("fp16", 2), ("bf16", 2)):
        codec = create_codec(name)
        payload = codec.encode(x)
        assert len(payload) == codec.header_nbytes(3) + itemsize * x.numel()
    assert torch.equal(create_codec("none").decode(create_codec("none").encode(x)), x)
    y16 = create_codec("fp16").decode(create_codec("fp16").encode(x))
    assert (y16 - x).abs().max() <= x.abs().max() * 2**-11
    yb = create_codec("bf16").decode(create_codec("bf16").encode(x))
    assert (yb - x).abs().max() <= x.abs().max() * 2**-8


def test_header_is_small() -> None:
    # magic 4 + version + codec + dtype + ndim + 4 per dim + parameter block (at most 13 bytes here)
    for name in ALL:
        codec = create_codec(name)
        assert 8 + 4 * 4 <= codec.header_nbytes(4) <= 8 + 4 * 4 + 32, name


@pytest.mark.parametrize("bits", range(1, 9))
def test_quant_error_is_at_most_half_a_step(bits: int) -> None:
    x = torch.randn(5000) * 3
    y = create_codec("quant", bits=bits).decode(create_codec("quant", bits=bits).encode(x))
    step = (x.max() - x.min()) / (2**bits - 1)
    assert (y - x).abs().max() <= step / 2 * (1 + 1e-4) + 1e-6
    assert len(set(y.tolist())) <= 2**bits


def test_quant_constant_tensor() -> None:
    x = torch.full((10,), 2.5)
    assert torch.equal(create_codec("quant").decode(create_codec("quant").encode(x)), x)


@pytest.mark.parametrize("bucket", [0, 100, 512])
def test_qsgd_error_bound_levels_and_size(bucket: int) -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    codec = create_codec("qsgd", levels=7, bucket=bucket, seed=1)
    payload = codec.encode(x)
    y = codec.decode(payload)
    nb = 1 if bucket == 0 else -(-1000 // bucket)
    size = bucket or 1000  # the last bucket is shorter
    assert len(payload) == codec.header_nbytes(1) + 4 * nb + 1000 * 4 // 8
    for b in range(nb):
        xb, yb = x[b * size : (b + 1) * size], y[b * size : (b + 1) * size]
        step = xb.norm() / 7
        assert (yb - xb).abs().max() < step
        assert torch.allclose(yb / step, torch.round(yb / step), atol=1e-4)


def test_qsgd_buckets_reduce_the_error() -> None:
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(3))
    errors = {}
    for bucket, size in ((0, 100_000), (64, 64), (512, 512)):
        codec = create_codec("qsgd", levels=7, bucket=bucket, seed=0)
        errors[bucket] = float((codec.decode(codec.encode(x)) - x).norm() / x.norm())
        # QSGD lemma: E||Q(x) - x||^2 <= min(B / s^2, sqrt(B) / s) ||x||^2 per bucket of size B
        assert errors[bucket] ** 2 <= min(size / 49, size**0.5 / 7)
    # measured: 5.93 (one bucket), 1.25 (512), 0.47 (64)
    assert errors[64] < errors[512] < errors[0] / 4


@pytest.mark.parametrize(
    "name,params",
    [("qsgd", {"levels": 3, "bucket": 0}), ("qsgd", {"levels": 3, "bucket": 16}), ("randk", {"keep": 0.25})],
)
def test_unbiased_codecs(name: str, params: dict) -> None:
    x = torch.randn(64, generator=torch.Generator().manual_seed(7))
    codec = create_codec(name, seed=11, **params)
    trials = 6000
    draws = torch.stack([codec.decode(codec.encode(x)) for _ in range(trials)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(trials)
    z = (mean - x) / se.clamp_min(1e-12)
    assert z.abs().max() < 5.0, z.abs().max()


def test_topk_keeps_exactly_the_largest() -> None:
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    codec = create_codec("topk", keep=0.01)
    y = codec.decode(codec.encode(x))
    kept = y != 0
    assert int(kept.sum()) == 100
    assert torch.equal(y[kept], x[kept])
    assert x[kept].abs().min() >= x[~kept].abs().max()


def test_topk_large_tensor_matches_torch_topk() -> None:
    # exercises the sampled-threshold fast path of select_topk
    x = torch.relu(torch.randn(300_000, generator=torch.Generator().manual_seed(4)))
    k = 3000
    y = create_codec("topk", keep=k / x.numel()).decode(create_codec("topk", keep=k / x.numel()).encode(x))
    ref = torch.zeros_like(x)
    top = torch.topk(x, k).indices
    ref[top] = x[top]
    assert torch.equal(y, ref)


def test_topk_wire_switches_to_bitmap_above_one_32nd() -> None:
    d = 32_000
    x = torch.randn(d)
    for keep, positions in ((0.03, 4 * 960), (1 / 32, 4 * 1000), (0.04, d // 8)):
        codec = create_codec("topk", keep=keep)
        k = math.floor(keep * d)
        body = len(codec.encode(x)) - codec.header_nbytes(1)
        assert body == positions + 4 * k, keep


def test_randk_sends_no_indices_and_regenerates_them() -> None:
    x = torch.randn(4000)
    codec = create_codec("randk", keep=0.01, seed=5)
    payload = codec.encode(x)
    assert len(payload) - codec.header_nbytes(1) == 4 * 40
    y = create_codec("randk").decode(payload)  # any instance decodes: the seed is in the payload
    kept = y != 0
    assert int(kept.sum()) == 40
    torch.testing.assert_close(y[kept], x[kept] * 100.0)


def test_randtopk_alpha_zero_is_topk_and_alpha_explores() -> None:
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(8))
    top = create_codec("topk", keep=0.01)
    assert torch.equal(
        create_codec("randtopk", keep=0.01, alpha=0.0, seed=1).decode(
            create_codec("randtopk", keep=0.01, alpha=0.0, seed=1).encode(x)
        ),
        top.decode(top.encode(x)),
    )
    codec = create_codec("randtopk", keep=0.01, alpha=0.5, seed=1)
    y = codec.decode(codec.encode(x))
    in_top = (top.decode(top.encode(x)) != 0) & (y != 0)
    frac_top = int(in_top.sum()) / 200
    # P(top element chosen) is high but not 1: about half the draws go to the top-k
    assert 0.3 < frac_top < 0.9


def test_sign_codec() -> None:
    x = torch.tensor([1.0, -2.0, 0.0, 3.0])
    y = create_codec("sign").decode(create_codec("sign").encode(x))
    assert y.tolist() == [1.5, -1.5, 1.5, 1.5]


def test_powersgd_exact_on_low_rank_and_dense_fallback() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(40, 3, generator=g) @ torch.randn(3, 50, generator=g)
    codec = create_codec("powersgd", rank=3, seed=0)
    y = codec.decode(codec.encode(m))
    assert (y - m).norm() / m.norm() < 1e-4
    assert len(codec.encode(m)) == codec.header_nbytes(2) + 4 * 3 * (40 + 50)
    v = torch.randn(17)
    assert torch.equal(codec.decode(codec.encode(v)), v)  # 1-D goes dense


def test_powersgd_warm_start_improves_over_steps() -> None:
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    m = u @ torch.diag(torch.logspace(0, -3, 64)) @ u.T
    codec = create_codec("powersgd", rank=4, seed=0)
    errors = [float((codec.decode(codec.encode(m)) - m).norm()) for _ in range(6)]
    best = float(torch.linalg.svdvals(m)[4:].norm())
    assert errors[-1] < errors[0]
    assert errors[-1] < 1.05 * best


@pytest.mark.parametrize("name", [n for n in ALL if "seed" in _params(n)])
def test_same_seed_same_bytes(name: str) -> None:
    x = sample(name, (32, 40))
    a, b = create_codec(name, seed=9), create_codec(name, seed=9)
    first = [a.encode(x) for _ in range(3)]
    assert first == [b.encode(x) for _ in range(3)]


def test_decode_to_requested_device() -> None:
    x = torch.randn(8, 8)
    for name in ALL:
        codec = make(name)
        xin = torch.relu(x) if name in NON_NEGATIVE else x
        assert codec.decode(codec.encode(xin), device="cpu").device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_in_cuda_out(name: str) -> None:
    codec = make(name)
    x = sample(name, (64, 33)).cuda()
    payload = codec.encode(x)
    y = codec.decode(payload, device="cuda")
    assert y.device.type == "cuda" and y.shape == x.shape
    ycpu = make(name).decode(payload)
    torch.testing.assert_close(y.cpu(), ycpu)


def test_randtopk_matches_a_brute_force_weighted_draw() -> None:
    # the O(k log k) split must have the law of the full exponential race over all d elements
    d, k, alpha, trials = 200, 20, 0.3, 4000
    codec = create_codec("randtopk", keep=k / d, alpha=alpha, seed=4)
    fast = [codec.split_counts(k, d - k)[0] for _ in range(trials)]  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(5)
    w = torch.full((d,), alpha / (d - k))
    w[:k] = (1 - alpha) / k
    brute = [
        int((torch.topk(torch.empty(d).exponential_(generator=g) / w, k, largest=False).indices < k).sum())
        for _ in range(trials)
    ]
    mean_fast, mean_brute = sum(fast) / trials, sum(brute) / trials
    sd = float(torch.tensor(brute, dtype=torch.float64).std())
    assert abs(mean_fast - mean_brute) < 5 * sd * (2 / trials) ** 0.5


def test_randtopk_positions_are_distinct_and_non_top_uniform() -> None:
    d, k = 400, 40
    x = torch.arange(d, dtype=torch.float32)  # top-k = the last 40 positions
    codec = create_codec("randtopk", keep=k / d, alpha=0.5, seed=2)
    hits = torch.zeros(d)
    for _ in range(2000):
        y = codec.decode(codec.encode(x))
        assert int((y != 0).sum()) in (k, k - 1)  # position 0 holds the value 0
        hits += (y != 0).float()
    rest = hits[1 : d - k]  # exclude position 0 (value 0 decodes as 0 even when kept)
    assert rest.min() > 0  # every non-top position gets explored
    assert float(rest.std() / rest.mean()) < 0.35  # roughly uniform over the non-top positions


@pytest.mark.parametrize("name", ALL)
def test_support_is_read_from_the_payload(name: str) -> None:
    x = sample(name, (32, 50), seed=5)
    codec = make(name)
    payload = codec.encode(x)
    mask = codec.support(payload)
    assert mask.dtype == torch.bool and mask.shape == x.shape
    y = codec.decode(payload)
    if name in {"topk", "randtopk", "ms"}:
        k = int(codec.keep * x.numel())  # type: ignore[attr-defined]
        assert int(mask.sum()) == k
        assert torch.equal(y[mask], x[mask])  # the support is where values travel exactly
    if name == "topk" or name == "ms":
        assert torch.equal(
            mask.reshape(-1).nonzero().squeeze(1), torch.sort(torch.topk(x.abs().reshape(-1), k).indices).values
        )
    if name == "randk":
        assert torch.equal(mask, y != 0)
    if name in {"none", "fp16", "bf16", "quant", "qsgd", "sign", "powersgd", "dither"}:
        assert bool(mask.all())
    assert not bool(codec.support(codec.encode(x[:0])).any())
