"""Bad input to encoders, bad parameters to ``create_codec``, bad payloads to decoders: the errors and messages.

Rules under test (``fl_split/codecs/base.py``, ``registry.py``, ``wire.py``):

* NaN/Inf in the input: ``ValueError`` naming the codec and the number of bad values; with
  ``nonfinite="zero"`` they are encoded as 0.
* Integer, bool and complex tensors and non-tensors: ``TypeError``.
* Empty tensors round-trip with their shape and dtype.
* Out-of-range parameters, unknown parameter names and unknown codec names: ``ValueError`` at
  ``create_codec`` time, stating the allowed range or listing the valid names.
* Payload problems (wrong codec, magic, version, truncation, ...): ``CodecError`` with a clear message.

Every test is parametrised over ``list_codecs()`` where the rule applies to all codecs.
"""

from __future__ import annotations

import math
import re
import struct

import numpy as np
import pytest
import torch

from fl_split.codecs import CodecError, codec_class, codec_parameters, create_codec, decode_payload, list_codecs

CODECS = list_codecs()
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
FIXED_HEADER = 8
#: An allowed range written as ``1..8``, ``[1, 32768]``, ``(0, 1]``, ``[0, 1)``, ``[0, 2**63)``.
RANGE = re.compile(r"\d+\s*\.\.\s*\d+|[\[(]\s*-?[\d.]+\s*,\s*[\w.*]+\s*[\])]")


def make(name: str, **params: object):
    """``create_codec`` with a fixed seed where the codec takes one (deterministic tests)."""
    if "seed" in codec_parameters(name):
        params.setdefault("seed", 11)
    return create_codec(name, **params)


def sample(shape: tuple[int, ...] = (4, 64), seed: int = 0) -> torch.Tensor:
    """Non-negative float32 input every codec accepts with its defaults (ms needs x >= 0 and d >= 100)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).abs()


def codec_id(name: str) -> int:
    return codec_class(name).codec_id


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


# --------------------------------------------------------------------------------------------------
# NaN / Inf in the input
# --------------------------------------------------------------------------------------------------
BAD_PATTERNS = {
    "one_nan": (1, 0, 0),
    "one_inf": (0, 1, 0),
    "one_neg_inf": (0, 0, 1),
    "mixed_5": (3, 1, 1),
    "all_256": (100, 100, 56),
}


def with_nonfinite(x: torch.Tensor, n_nan: int, n_pinf: int, n_ninf: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with NaN, +Inf and -Inf written at scattered positions; also returns the bad-position mask."""
    flat = x.clone().reshape(-1)
    perm = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(5))
    bad = torch.zeros(flat.numel(), dtype=torch.bool)
    for value, count in ((math.nan, n_nan), (math.inf, n_pinf), (-math.inf, n_ninf)):
        idx, perm = perm[:count], perm[count:]
        flat[idx] = value
        bad[idx] = True
    return flat.reshape(x.shape), bad.reshape(x.shape)


@pytest.mark.parametrize("pattern", BAD_PATTERNS, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", CODECS)
def test_nonfinite_input_raises_naming_codec_and_count(name: str, dtype: torch.dtype, pattern: str) -> None:
    n_nan, n_pinf, n_ninf = BAD_PATTERNS[pattern]
    x, _ = with_nonfinite(sample(), n_nan, n_pinf, n_ninf)
    with pytest.raises(ValueError) as info:
        make(name).encode(x.to(dtype))
    assert not isinstance(info.value, CodecError), "an encoder input problem is not a payload problem"
    msg = str(info.value)
    n_bad = n_nan + n_pinf + n_ninf
    assert f"'{name}'" in msg, msg
    assert re.search(rf"(?<![\d.]){n_bad}(?![\d.])", msg), f"count {n_bad} missing from: {msg}"
    assert "nonfinite" in msg, f"the remedy (nonfinite='zero') is not mentioned: {msg}"


@pytest.mark.parametrize("name", CODECS)
def test_nonfinite_scalar_raises(name: str) -> None:
    with pytest.raises(ValueError, match=rf"'{name}'.*\b1\b"):
        make(name).encode(torch.tensor(math.nan))


@pytest.mark.parametrize("name", CODECS)
def test_nonfinite_policy_must_be_raise_or_zero(name: str) -> None:
    with pytest.raises(ValueError, match="nonfinite") as info:
        create_codec(name, nonfinite="ignore")
    assert "'raise'" in str(info.value) and "'zero'" in str(info.value)


#: Codecs whose decoder reproduces an input 0 exactly (others only round-trip it through their
#: approximation: quant to within half a step, sign to +scale, powersgd to a low-rank value, bird in
#: sign mode to its block scale). Dither's default (non-subtractive) mode maps 0 to level 0.
ZERO_EXACT = {"none", "fp16", "bf16", "topk", "randtopk", "randk", "qsgd", "ms", "dither"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", CODECS)
def test_nonfinite_zero_encodes_bad_values_as_zero(name: str, dtype: torch.dtype) -> None:
    x, bad = with_nonfinite(sample(seed=1), *BAD_PATTERNS["mixed_5"])
    x = x.to(dtype)
    payload = make(name, nonfinite="zero").encode(x)
    # Exactly the payload of the same input with 0 written in place of the bad values.
    zeroed = torch.where(bad, torch.zeros((), dtype=dtype), x)
    assert payload == make(name).encode(zeroed)
    out = make(name).decode(payload)
    assert out.shape == x.shape and out.dtype == dtype
    assert bool(torch.isfinite(out).all())
    if name in ZERO_EXACT:
        assert bool((out[bad] == 0).all()), out[bad]
    elif name == "quant":
        params = struct.unpack_from("<Bff", payload, FIXED_HEADER + 4 * x.ndim)
        half_step = (params[2] - params[1]) / (2 * ((1 << params[0]) - 1))
        assert bool((out[bad].float().abs() <= half_step * 1.001).all())


@pytest.mark.parametrize("name", CODECS)
def test_nonfinite_zero_all_bad_decodes_to_zeros(name: str) -> None:
    x, _ = with_nonfinite(sample(), *BAD_PATTERNS["all_256"])
    out = make(name).decode(make(name, nonfinite="zero").encode(x))
    assert out.shape == x.shape
    assert bool((out == 0).all()), f"{name}: an all-NaN/Inf input under nonfinite='zero' decoded to {out.unique()}"


# --------------------------------------------------------------------------------------------------
# Wrong input types
# --------------------------------------------------------------------------------------------------
NON_FLOAT = [
    torch.ones(4, 64, dtype=torch.int32),
    torch.ones(4, 64, dtype=torch.int64),
    torch.ones(4, 64, dtype=torch.uint8),
    torch.ones(4, 64, dtype=torch.int8),
    torch.ones(4, 64, dtype=torch.bool),
    torch.ones(4, 64, dtype=torch.complex64),
    torch.ones(4, 64, dtype=torch.complex128),
]


@pytest.mark.parametrize("x", NON_FLOAT, ids=lambda t: str(t.dtype))
@pytest.mark.parametrize("name", CODECS)
def test_non_float_tensor_raises_type_error(name: str, x: torch.Tensor) -> None:
    with pytest.raises(TypeError) as info:
        make(name).encode(x)
    msg = str(info.value)
    assert f"'{name}'" in msg and str(x.dtype) in msg and "float" in msg, msg


NON_TENSORS = [[1.0, 2.0], (1.0,), np.ones(8, dtype=np.float32), 1.5, None, "abc", b"\x00\x00\x80\x3f"]


@pytest.mark.parametrize("x", NON_TENSORS, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("name", CODECS)
def test_non_tensor_raises_type_error(name: str, x: object) -> None:
    with pytest.raises(TypeError) as info:
        make(name).encode(x)  # type: ignore[arg-type]
    msg = str(info.value)
    assert f"'{name}'" in msg and type(x).__name__ in msg, msg


# --------------------------------------------------------------------------------------------------
# Empty tensors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (0, 5)], ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", CODECS)
def test_empty_tensor_round_trips(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    codec = make(name)
    payload = codec.encode(torch.empty(shape, dtype=dtype))
    assert len(payload) == codec.header_nbytes(len(shape)), "an empty tensor has an empty body"
    for out in (codec.decode(payload), decode_payload(payload), make(name).decode(payload)):
        assert tuple(out.shape) == shape and out.dtype == dtype


# --------------------------------------------------------------------------------------------------
# Invalid parameters at create_codec time
# --------------------------------------------------------------------------------------------------
KEEP_CODECS = ["topk", "randk", "randtopk", "ms", "bird"]


def test_keep_codecs_are_the_expected_ones() -> None:
    assert set(KEEP_CODECS) <= {n for n in CODECS if "keep" in codec_parameters(n)}


def assert_range_error(name: str, param: str, value: object) -> str:
    """``create_codec(name, param=value)`` raises ValueError naming the parameter, the value and a range."""
    with pytest.raises(ValueError) as info:
        create_codec(name, **{param: value})
    msg = str(info.value)
    assert param in msg, msg
    assert repr(value) in msg or str(value) in msg, f"the rejected value {value!r} is not in: {msg}"
    assert RANGE.search(msg), f"no allowed range in: {msg}"
    return msg


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.5, math.nan, math.inf])
@pytest.mark.parametrize("name", [n for n in KEEP_CODECS if n in CODECS])
def test_keep_out_of_range(name: str, keep: float) -> None:
    msg = assert_range_error(name, "keep", keep)
    assert re.search(r"\(0, 1[\])]", msg), msg


def test_ms_keep_one_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\) for ms.*'none'"):
        create_codec("ms", keep=1.0)


@pytest.mark.parametrize("bits", [0, 9, -1, 2.5])
@pytest.mark.parametrize("name", ["ms", "quant"])
def test_bits_out_of_range(name: str, bits: int) -> None:
    msg = assert_range_error(name, "bits", bits)
    assert re.search(r"1\s*\.\.\s*8|\[1, 8\]", msg), msg


@pytest.mark.parametrize("rank", [0, -1, 65536])
def test_powersgd_rank_out_of_range(rank: int) -> None:
    assert_range_error("powersgd", "rank", rank)


@pytest.mark.parametrize("levels", [0, -3])
@pytest.mark.parametrize("name", [n for n in CODECS if "levels" in codec_parameters(n)])
def test_levels_out_of_range(name: str, levels: int) -> None:
    assert_range_error(name, "levels", levels)


def test_levels_codecs_include_qsgd() -> None:
    assert "levels" in codec_parameters("qsgd")


@pytest.mark.parametrize("alpha", [1.0, -0.1, 2])
def test_randtopk_alpha_out_of_range(alpha: float) -> None:
    msg = assert_range_error("randtopk", "alpha", alpha)
    assert "[0, 1)" in msg


@pytest.mark.parametrize("name", [n for n in CODECS if "seed" in codec_parameters(n)])
@pytest.mark.parametrize("seed", [-1, 2**63, 1.5])
def test_seed_out_of_range(name: str, seed: object) -> None:
    assert_range_error(name, "seed", seed)


@pytest.mark.parametrize("name", CODECS)
def test_unknown_parameter_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(ValueError) as info:
        create_codec(name, bogus_parameter=1)
    msg = str(info.value)
    assert "bogus_parameter" in msg and f"'{name}'" in msg, msg
    for param in codec_parameters(name):
        assert param in msg, f"valid parameter {param!r} not listed in: {msg}"


def test_misspelt_parameter_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'kep'.*keep"):
        create_codec("topk", kep=0.1)


@pytest.mark.parametrize("bad_name", ["nope", "TopK", "", "top-k"])
def test_unknown_codec_lists_the_registered_ones(bad_name: str) -> None:
    with pytest.raises(ValueError) as info:
        create_codec(bad_name)
    msg = str(info.value)
    assert repr(bad_name) in msg
    for name in CODECS:
        assert name in msg, f"registered codec {name!r} not listed in: {msg}"


# --------------------------------------------------------------------------------------------------
# ms: its own input rules
# --------------------------------------------------------------------------------------------------
def test_ms_negative_input_unsigned_suggests_signed() -> None:
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match=r"signed=True") as info:
        create_codec("ms").encode(x)
    assert not isinstance(info.value, CodecError)
    out = create_codec("ms", signed=True).decode(create_codec("ms", signed=True).encode(x))
    assert out.shape == x.shape


@pytest.mark.parametrize(("keep", "numel"), [(0.01, 50), (0.01, 99), (0.25, 3), (0.5, 1)])
def test_ms_keep_giving_zero_kept_elements(keep: float, numel: int) -> None:
    assert math.floor(keep * numel) == 0
    with pytest.raises(ValueError, match=rf"k = 0 .*{numel} elements") as info:
        create_codec("ms", keep=keep).encode(torch.rand(numel))
    assert "keep" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Decoding: wrong codec, dispatch, damaged headers
# --------------------------------------------------------------------------------------------------
_PAYLOADS: dict[str, bytes] = {}


def payload_of(name: str) -> bytes:
    if name not in _PAYLOADS:
        _PAYLOADS[name] = make(name).encode(sample((4, 64), seed=3))
    return _PAYLOADS[name]


@pytest.mark.parametrize("name", CODECS)
def test_decoding_with_the_wrong_codec(name: str) -> None:
    payload = payload_of(name)
    for other in CODECS:
        if other == name:
            continue
        with pytest.raises(CodecError) as info:
            make(other).decode(payload)
        msg = str(info.value)
        assert f"'{other}'" in msg and str(codec_id(name)) in msg and "decode_payload" in msg, msg


@pytest.mark.parametrize("name", CODECS)
def test_decode_payload_dispatches_on_the_header(name: str) -> None:
    # Non-default parameters too: every payload carries what its decoder needs.
    for params in ({}, *VARIED.get(name, [])):
        payload = make(name, **params).encode(sample((4, 64), seed=4))
        assert payload[5] == codec_id(name)
        expected = make(name, **params).decode(payload)
        assert_same(decode_payload(payload), expected)
        assert_same(make(name).decode(payload), expected)


VARIED: dict[str, list[dict[str, object]]] = {
    "quant": [{"bits": 3}],
    "qsgd": [{"levels": 100}],
    "topk": [{"keep": 0.5}],
    "randtopk": [{"keep": 0.5, "alpha": 0.5}],
    "randk": [{"keep": 0.3, "unbiased": False}],
    "ms": [{"keep": 0.1, "bits": 5, "signed": True}],
    "powersgd": [{"rank": 2}],
    "bird": [{"keep": 0.5, "mode": "values"}],
    "dither": [{"levels": 3}],
}


@pytest.mark.parametrize("cid", [200, 255, 13, 99])
def test_decode_payload_unknown_codec_id(cid: int) -> None:
    if cid in {codec_id(n) for n in CODECS}:
        pytest.skip(f"id {cid} is registered now")
    payload = bytearray(payload_of("none"))
    payload[5] = cid
    with pytest.raises(CodecError, match=rf"codec id {cid}\b.*no registered codec"):
        decode_payload(bytes(payload))


@pytest.mark.parametrize("magic", [b"XLSC", b"flsc", b"\x00\x00\x00\x00", b"FLSD"])
@pytest.mark.parametrize("name", CODECS)
def test_wrong_magic(name: str, magic: bytes) -> None:
    payload = magic + payload_of(name)[4:]
    for decode in (make(name).decode, decode_payload):
        with pytest.raises(CodecError, match=r"not an fl-split payload.*magic") as info:
            decode(payload)
        assert "FLSC" in str(info.value)


@pytest.mark.parametrize("version", [0, 2, 255])
@pytest.mark.parametrize("name", CODECS)
def test_wrong_version(name: str, version: int) -> None:
    payload = bytearray(payload_of(name))
    payload[4] = version
    for decode in (make(name).decode, decode_payload):
        with pytest.raises(CodecError, match=rf"version {version}\b.*version 1") as info:
            decode(bytes(payload))
        assert "release" in str(info.value)


@pytest.mark.parametrize("name", CODECS)
def test_truncated_header(name: str) -> None:
    payload = payload_of(name)
    header_len = make(name).header_nbytes(payload[7])
    for n in range(header_len):
        for decode in (make(name).decode, decode_payload):
            with pytest.raises(CodecError, match=r"truncated") as info:
                decode(payload[:n])
            assert str(n) in str(info.value), f"the received length {n} is not in: {info.value}"


@pytest.mark.parametrize("name", CODECS)
def test_truncated_body(name: str) -> None:
    payload = payload_of(name)
    header_len = make(name).header_nbytes(payload[7])
    for n in sorted({header_len, header_len + 1, (header_len + len(payload)) // 2, len(payload) - 1}):
        with pytest.raises(CodecError, match=rf"'{name}'.*truncated"):
            make(name).decode(payload[:n])


@pytest.mark.parametrize("name", CODECS)
def test_trailing_bytes(name: str) -> None:
    # Most decoders say "3 unexpected trailing bytes"; a decoder that reads a self-delimiting stream to
    # the end of the payload (dither) reports the length mismatch in its own words.
    with pytest.raises(CodecError, match=rf"'{name}'.*(3 unexpected trailing bytes|stream is \d+ bytes)"):
        make(name).decode(payload_of(name) + b"\x00\x01\x02")


@pytest.mark.parametrize("code", [4, 5, 255])
@pytest.mark.parametrize("name", CODECS)
def test_unknown_dtype_code(name: str, code: int) -> None:
    payload = bytearray(payload_of(name))
    payload[6] = code
    with pytest.raises(CodecError, match=rf"unknown dtype code {code}\b"):
        make(name).decode(bytes(payload))


@pytest.mark.parametrize("ndim", [9, 200, 255])
@pytest.mark.parametrize("name", CODECS)
def test_too_many_dimensions(name: str, ndim: int) -> None:
    payload = bytearray(payload_of(name))
    payload[7] = ndim
    with pytest.raises(CodecError, match=rf"{ndim} dimensions.*at most 8"):
        make(name).decode(bytes(payload))


@pytest.mark.parametrize("bad", ["FLSC", None, 3, [70, 76, 83, 67], torch.zeros(16, dtype=torch.uint8)], ids=repr)
@pytest.mark.parametrize("name", CODECS)
def test_payload_must_be_bytes(name: str, bad: object) -> None:
    for decode in (make(name).decode, decode_payload):
        with pytest.raises(CodecError, match=r"payload must be bytes"):
            decode(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", CODECS)
def test_bytes_like_payloads_decode_alike(name: str) -> None:
    payload = payload_of(name)
    expected = make(name).decode(payload)
    for view in (bytearray(payload), memoryview(payload), memoryview(b"\xff" + payload)[1:]):
        assert_same(make(name).decode(view), expected)
        assert_same(decode_payload(view), expected)


# --------------------------------------------------------------------------------------------------
# Finite input of extreme magnitude: refuse it at encode (ValueError), or round-trip to finite values
# --------------------------------------------------------------------------------------------------
def _extreme_inputs() -> dict[str, torch.Tensor]:
    base = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))  # 16x64: powersgd goes low-rank
    idx = torch.arange(base.numel()).reshape(base.shape)
    return {
        "max_const": torch.full(base.shape, 3.4e38),
        "half_max_const": torch.full(base.shape, 2e38),
        "one_max": torch.where(idx == 7, torch.tensor(3.4e38), base),
        "norm_overflow": base * 1e20,  # sum of squares overflows float32
        "wide_range": torch.where(idx % 2 == 0, base * 1e-30, base * 1e30),
        "span_overflow": torch.where(idx % 2 == 0, torch.tensor(-3e38), torch.tensor(3e38)),
        "subnormal": base * 1e-44,
    }


EXTREME = _extreme_inputs()


@pytest.mark.parametrize("kind", EXTREME)
@pytest.mark.parametrize("name", CODECS)
def test_extreme_finite_input_is_refused_or_decodes_finite(name: str, kind: str) -> None:
    x = EXTREME[kind].abs() if name == "ms" else EXTREME[kind]
    assert bool(torch.isfinite(x).all())
    codec = make(name)
    try:
        payload = codec.encode(x)
    except ValueError as exc:
        assert not isinstance(exc, CodecError) and name in str(exc), str(exc)
        return
    out = codec.decode(payload)  # a payload the encoder emitted must decode
    assert out.shape == x.shape
    assert bool(torch.isfinite(out).all()), f"{name}: {int((~torch.isfinite(out)).sum())} non-finite outputs"


# --------------------------------------------------------------------------------------------------
# Magnitude limit: finite input beyond 2**64 is refused by name, also float64 beyond the float32 range
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["none", "topk", "qsgd", "sign"])
def test_input_beyond_the_magnitude_limit_is_refused_not_called_nonfinite(name: str) -> None:
    for x in (torch.tensor([1e300, 1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([3e19, 1.0, 2.0, 3.0])):
        for policy in ("raise", "zero"):  # a finite value must never be silently encoded as 0
            with pytest.raises(ValueError, match=r"exceeds the supported .*2\*\*64") as info:
                create_codec(name, nonfinite=policy).encode(x)
            assert name in str(info.value) and "non-finite" not in str(info.value)
    just_inside = torch.tensor([1.8e19])
    assert torch.equal(create_codec("none").decode(create_codec("none").encode(just_inside)), just_inside)
