"""Fuzzing every decoder: random bytes, mutated valid payloads, and payloads fed to the wrong codec.

The decode contract under attack (``Codec.decode`` and ``decode_payload``):

* the only exception a decoder may raise is :class:`~fl_split.codecs.CodecError` (any other type —
  ``IndexError``, ``RuntimeError`` from torch, ``struct.error``, ``OverflowError``, ``MemoryError``, a
  plain ``ValueError`` — is a bug and fails the test with its traceback);
* a decode that succeeds returns a CPU tensor with exactly the shape and dtype the header declares;
* it takes well under :data:`DECODE_TIME_LIMIT_S` seconds;
* a header whose shape exceeds the decoder's element limit is refused before anything is allocated;
* decoders that validate every float they read produce finite values (see :data:`RAW_FLOAT_CODECS`).

Every test is parametrised over ``list_codecs()``, so codecs registered later (``dither``) are fuzzed
too. Hypothesis runs derandomized with no example database, so CI sees the same examples every run.

Memory: sparse and low-rank formats are compressive, so a payload of a few dozen bytes may legitimately
declare up to ``MAX_NUMEL`` (2**31 - 1) elements, and decoding it allocates 8 GiB of zeros. The
hypothesis tests therefore decode with ``max_numel=FUZZ_MAX_NUMEL``; the default limit itself is
checked by :func:`test_oversized_shape_is_refused_before_allocating`.
"""

from __future__ import annotations

import math
import resource
import struct
import time
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_split.codecs import CodecError, codec_class, codec_parameters, create_codec, decode_payload, list_codecs
from fl_split.codecs.wire import MAX_NUMEL, unpack_header

CODECS = list_codecs()
DECODE_TIME_LIMIT_S = 2.0
#: Element limit of the hypothesis decodes (keeps a mutated shape from allocating gigabytes).
FUZZ_MAX_NUMEL = 1 << 20
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DTYPE_BY_CODE = dict(enumerate(DTYPES))
FIXED_HEADER = 8  # magic(4) version(1) codec id(1) dtype(1) ndim(1)

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# --------------------------------------------------------------------------------------------------
# Which decoders may legitimately return NaN/Inf from a corrupted payload.
#
# A decoder that copies floats from the payload without checking them ("raw floats") returns NaN or
# Inf when a bit flip turns a value into one; that is not a bug. A decoder that checks every float it
# reads (and whose output is bounded by those floats) must return finite values. Independently of the
# codec, casting to a float16/bfloat16 header dtype may overflow to +-Inf (never to NaN).
# --------------------------------------------------------------------------------------------------
RAW_FLOAT_CODECS: dict[str, str] = {
    "none": "values are the payload's float32 words",
    "fp16": "values are the payload's float16 words",
    "bf16": "values are the payload's bfloat16 words",
    "topk": "kept values are raw float32 words",
    "randtopk": "kept values are raw float32 words (topk wire)",
    "randk": "kept values are raw float32 words, scaled by d/k",
    "powersgd": "P and Q factors (and the dense fallback) are raw float32 words; P Q^T may overflow",
}
#: Codecs that carry raw floats only in some payloads: predicate on the parsed header.
RAW_FLOAT_WHEN: dict[str, Callable[[object], bool]] = {
    # bird checks its scale and its kept values, but block = 0 is the dense float32 passthrough.
    "bird": lambda header: header.params[0] == 0,  # type: ignore[attr-defined]
}

# --------------------------------------------------------------------------------------------------
# Codec parameter variants: defaults plus the parameters that change the wire layout.
# --------------------------------------------------------------------------------------------------
VARIANTS: dict[str, list[dict[str, object]]] = {
    "quant": [{}, {"bits": 1}, {"bits": 3}, {"bits": 5}],
    "qsgd": [{}, {"levels": 1, "bucket": 0}, {"levels": 127, "bucket": 5}, {"levels": 20, "bucket": 3}],
    "topk": [{}, {"keep": 0.5}, {"keep": 0.02}],  # bitmap positions when keep > 1/32, u32 indices below
    "randtopk": [{}, {"keep": 0.5, "alpha": 0.5}, {"keep": 0.02, "alpha": 0.0}],
    "randk": [{}, {"keep": 0.5, "unbiased": False}, {"keep": 1.0}],
    "ms": [
        {"keep": 0.25},
        {"keep": 0.25, "bits": 1},
        {"keep": 0.25, "bits": 3, "signed": True},
        {"keep": 0.5, "bits": 8, "signed": True},
        {"keep": 0.13, "bits": 5},
    ],
    "powersgd": [{}, {"rank": 1}, {"rank": 2, "warm_start": False}],
    "bird": [
        {},
        {"keep": 0.5, "block": 4, "mode": "values"},
        {"keep": 1.0},
        {"keep": None, "block": 3, "norm": "l2", "mode": "values", "values_dtype": "f16"},
        {"keep": 0.3, "block": "spatial", "norm": "l2"},
    ],
    "dither": [
        {},
        {"levels": 1},
        {"levels": 2**15},
        {"subtractive": True},
        {"levels": 3, "rescale": True},
        {"step": 0.5},
        {"step": 0.01, "subtractive": True},
    ],
}
#: Codecs that need ``1 <= floor(keep * d) < d`` (so at least 8 elements at keep = 0.13..0.5).
MIN_NUMEL = {"ms": 8}
#: Codecs whose default (signed=False) input must be non-negative.
NONNEG_UNLESS_SIGNED = {"ms"}


def variants(name: str) -> list[dict[str, object]]:
    """Parameter variants of codec ``name`` (every one seeded when the codec takes a seed)."""
    out = []
    for i, params in enumerate(VARIANTS.get(name, [{}])):
        params = dict(params)
        if "seed" in codec_parameters(name):
            params.setdefault("seed", 1234 + i)
        out.append(params)
    return out


_DECODERS: dict[str, object] = {}


def decoder(name: str):
    """A default-constructed codec: every payload carries its own parameters."""
    if name not in _DECODERS:
        params = {"seed": 7} if "seed" in codec_parameters(name) else {}
        _DECODERS[name] = create_codec(name, **params)
    return _DECODERS[name]


def codec_id(name: str) -> int:
    return codec_class(name).codec_id


ALL_IDS = sorted(codec_id(n) for n in CODECS)
NAME_BY_ID = {codec_id(n): n for n in CODECS}


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------
@st.composite
def tensors(draw: st.DrawFn, min_numel: int = 0, nonneg: bool = False) -> torch.Tensor:
    """A small tensor: 0-3 dims, any supported dtype, values of several kinds (dense, sparse, ties)."""
    dtype = draw(st.sampled_from(DTYPES))
    if min_numel:
        if draw(st.integers(0, 9)) == 0:
            shape: tuple[int, ...] = (0,)
        else:
            first = draw(st.integers(min_numel, 2 * min_numel))
            shape = (first, *draw(st.lists(st.integers(1, 4), max_size=2)))
    else:
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    kind = draw(st.sampled_from(["randn", "randn", "relu", "sparse", "zeros", "const", "ties", "tiny"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    n = math.prod(shape)
    if kind == "zeros":
        x = torch.zeros(n)
    elif kind == "const":
        x = torch.full((n,), draw(st.sampled_from([1.0, -2.5, 1e-3])))
    elif kind == "ties":
        x = torch.randint(-2, 3, (n,), generator=g).float()
    elif kind == "tiny":
        x = torch.randn(n, generator=g) * 1e-6
    else:
        x = torch.randn(n, generator=g) * draw(st.sampled_from([1e-2, 1.0, 100.0]))
        if kind == "relu":
            x = x.clamp_min(0)
        elif kind == "sparse":
            x = x * (torch.rand(n, generator=g) < 0.1)
    if nonneg:
        x = x.abs()
    return x.reshape(shape).to(dtype)


@st.composite
def valid_payloads(draw: st.DrawFn, name: str) -> bytes:
    """A payload made by codec ``name`` (one of its parameter variants) from a random small tensor."""
    params = draw(st.sampled_from(variants(name)))
    codec = create_codec(name, **params)
    nonneg = name in NONNEG_UNLESS_SIGNED and not params.get("signed", False)
    x = draw(tensors(MIN_NUMEL.get(name, 0), nonneg))
    return codec.encode(x)


BOUNDARY_U32 = [0, 1, 2, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
SPECIAL_F32 = [math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 2.5e38, -2.5e38, 1.7e38, 1e-45, -0.0, -1.0, 65504.0]


def param_fields(name: str) -> list[tuple[int, str]]:
    """(offset in the parameter block, struct code) of each numeric field of codec ``name``."""
    out, off, count = [], 0, ""
    for ch in decoder(name).param_format:  # type: ignore[attr-defined]
        if ch.isdigit():
            count += ch
            continue
        size = struct.calcsize("<" + ch)
        for _ in range(1 if ch == "s" else int(count or 1)):
            if ch != "s":
                out.append((off, ch))
            off += int(count or 1) if ch == "s" else size
        count = ""
    return out


def _unsigned(bits: int) -> st.SearchStrategy[int]:
    top = 2**bits - 1
    return st.sampled_from([0, 1, 2, 3, 7, 8, 9, 127, 128, top // 2, top // 2 + 1, top - 1, top]) | st.integers(0, top)


FIELD_VALUES: dict[str, st.SearchStrategy] = {
    "B": _unsigned(8),
    "H": _unsigned(16),
    "I": _unsigned(32),
    "Q": _unsigned(64),
    "f": st.sampled_from(SPECIAL_F32) | st.floats(width=32),
    "d": st.sampled_from(SPECIAL_F32) | st.floats(),
}


@st.composite
def mutated(draw: st.DrawFn, payload: bytes, name: str) -> bytes:
    """Apply 1-3 mutations: bit flips, byte edits, truncation, appends, inserts, deletes, header edits."""
    b = bytearray(payload)
    ndim = payload[7] if len(payload) > 7 else 0
    # Parameter fields are edited with values of their own type (counts, flags, scales).
    start = FIXED_HEADER + 4 * ndim
    fields = [(start + off, fmt) for off, fmt in param_fields(name)]
    if fields and draw(st.integers(0, 3)) == 0:
        for off, fmt in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=len(fields))):
            if off + struct.calcsize("<" + fmt) <= len(b):
                struct.pack_into("<" + fmt, b, off, draw(FIELD_VALUES[fmt]))
    # Half the examples edit only the parameter block and body in place, so that the header stays
    # valid and the codec's own parser (counts, flags, indices, floats) is what gets exercised.
    ops = draw(st.sampled_from([MUTATIONS, IN_PLACE_MUTATIONS]))
    for op in draw(st.lists(st.sampled_from(ops), min_size=1, max_size=3)):
        op(draw, b, ndim)
    return bytes(b)


def _pos(draw: st.DrawFn, b: bytearray, lo: int = 0, hi: int | None = None) -> int | None:
    hi = len(b) if hi is None else min(hi, len(b))
    return draw(st.integers(lo, hi - 1)) if hi > lo else None


def _bitflip(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if (i := _pos(draw, b)) is not None:
        b[i] ^= 1 << draw(st.integers(0, 7))


def _body_bitflip(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if (i := _pos(draw, b, FIXED_HEADER + 4 * ndim)) is not None:
        b[i] ^= 1 << draw(st.integers(0, 7))


def _body_byte(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if (i := _pos(draw, b, FIXED_HEADER + 4 * ndim)) is not None:
        b[i] = draw(st.sampled_from([0, 1, 255]) | st.integers(0, 255))


def _byte(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if (i := _pos(draw, b)) is not None:
        b[i] = draw(st.integers(0, 255))


def _truncate(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    del b[draw(st.integers(0, max(0, len(b) - 1))) :]


def _append(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    b.extend(draw(st.binary(min_size=1, max_size=32)))


def _insert(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    i = draw(st.integers(0, len(b)))
    b[i:i] = draw(st.binary(min_size=1, max_size=8))


def _delete(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if (i := _pos(draw, b)) is not None:
        del b[i : i + draw(st.integers(1, 8))]


def _magic(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if (i := _pos(draw, b, 0, 4)) is not None:
        b[i] = draw(st.integers(0, 255))


def _version(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if len(b) > 4:
        b[4] = draw(st.sampled_from([0, 2, 255]) | st.integers(0, 255))


def _codec_id(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if len(b) > 5:
        b[5] = draw(st.sampled_from(ALL_IDS) | st.integers(0, 255))


def _dtype(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if len(b) > 6:
        b[6] = draw(st.integers(0, 5) | st.integers(0, 255))


def _ndim(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if len(b) > 7:
        b[7] = draw(st.integers(0, 9) | st.integers(0, 255))


def _shape_dim(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if ndim and len(b) >= FIXED_HEADER + 4 * ndim:
        i = FIXED_HEADER + 4 * draw(st.integers(0, ndim - 1))
        b[i : i + 4] = struct.pack("<I", draw(st.sampled_from(BOUNDARY_U32) | st.integers(0, 2**32 - 1)))


def _param_or_body_u32(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if (i := _pos(draw, b, FIXED_HEADER + 4 * ndim, len(b) - 3)) is not None:
        b[i : i + 4] = struct.pack("<I", draw(st.sampled_from(BOUNDARY_U32)))


def _param_or_body_f32(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    if (i := _pos(draw, b, FIXED_HEADER + 4 * ndim, len(b) - 3)) is not None:
        b[i : i + 4] = struct.pack("<f", draw(st.sampled_from(SPECIAL_F32)))


def _param_byte(draw: st.DrawFn, b: bytearray, ndim: int) -> None:
    start = FIXED_HEADER + 4 * ndim
    if (i := _pos(draw, b, start, start + 16)) is not None:
        b[i] = draw(st.sampled_from([0, 1, 2, 3, 8, 9, 127, 128, 255]) | st.integers(0, 255))


MUTATIONS = [
    _bitflip,
    _bitflip,
    _byte,
    _truncate,
    _append,
    _insert,
    _delete,
    _magic,
    _version,
    _codec_id,
    _dtype,
    _ndim,
    _shape_dim,
    _shape_dim,
    _param_or_body_u32,
    _param_or_body_f32,
    _param_byte,
    _param_byte,
]
IN_PLACE_MUTATIONS = [
    _body_bitflip,
    _body_bitflip,
    _body_byte,
    _param_or_body_u32,
    _param_or_body_f32,
    _param_byte,
    _shape_dim,
    _dtype,
]


@st.composite
def plausible_payloads(draw: st.DrawFn, name: str) -> bytes:
    """A well-formed header for codec ``name`` (small shape) followed by random parameters and body."""
    ndim = draw(st.integers(0, 3))
    shape = draw(st.lists(st.integers(0, 12), min_size=ndim, max_size=ndim))
    param_size = decoder(name)._param_struct.size  # type: ignore[attr-defined]
    head = struct.pack(f"<4sBBBB{ndim}I", b"FLSC", 1, codec_id(name), draw(st.integers(0, 3)), ndim, *shape)
    params = draw(st.binary(min_size=param_size, max_size=param_size))
    body = draw(st.binary(max_size=160))
    return head + params + body


# --------------------------------------------------------------------------------------------------
# The contract check
# --------------------------------------------------------------------------------------------------
def declared(payload: bytes) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype from the header, parsed independently of the library."""
    ndim = payload[7]
    shape = struct.unpack_from(f"<{ndim}I", payload, FIXED_HEADER)
    return tuple(shape), DTYPE_BY_CODE[payload[6]]


def carries_raw_floats(name: str, payload: bytes) -> bool:
    if name in RAW_FLOAT_CODECS:
        return True
    when = RAW_FLOAT_WHEN.get(name)
    if when is None:
        return False
    header = unpack_header(payload, codec_id(name), name, decoder(name)._param_struct)  # type: ignore[attr-defined]
    return when(header)


def check_decode(decode: Callable[[bytes], torch.Tensor], payload: bytes) -> torch.Tensor | None:
    """Decode ``payload``; return ``None`` on CodecError, else the checked tensor.

    Any exception that is not a CodecError propagates and fails the calling test.
    """
    t0 = time.perf_counter()
    try:
        out = decode(payload)
    except CodecError:
        out = None
    elapsed = time.perf_counter() - t0
    assert elapsed < DECODE_TIME_LIMIT_S, f"decode took {elapsed:.2f} s on a {len(payload)}-byte payload"
    if out is None:
        return None
    shape, dtype = declared(payload)
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == shape, f"decoded shape {tuple(out.shape)}, header declares {shape}"
    assert out.dtype == dtype, f"decoded dtype {out.dtype}, header declares {dtype}"
    assert out.device.type == "cpu"
    return out


def check_values(name: str, payload: bytes, out: torch.Tensor) -> None:
    """Validated decoders return finite values (NaN never; Inf only from a float16/bfloat16 cast)."""
    if carries_raw_floats(name, payload) or out.numel() == 0:
        return
    wide = out.float()
    if out.dtype in (torch.float16, torch.bfloat16):
        ok = not bool(torch.isnan(wide).any())
    else:
        ok = bool(torch.isfinite(wide).all())
    assert ok, (
        f"codec {name!r} decoded non-finite values from a payload it accepted; if its decoder copies "
        f"floats from the payload unchecked, list it in RAW_FLOAT_CODECS. payload={payload.hex()}"
    )


def fuzz_decode(name: str, payload: bytes) -> None:
    """The full contract for one payload, through the codec and through ``decode_payload``."""
    out = check_decode(lambda p: decoder(name).decode(p, max_numel=FUZZ_MAX_NUMEL), payload)
    if out is not None:
        check_values(name, payload, out)
    out = check_decode(lambda p: decode_payload(p, max_numel=FUZZ_MAX_NUMEL), payload)
    if out is not None:
        check_values(NAME_BY_ID[payload[5]], payload, out)


# --------------------------------------------------------------------------------------------------
# (a) random bytes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CODECS)
@settings(FUZZ, max_examples=100)
@given(data=st.binary(max_size=256))
def test_random_bytes(name: str, data: bytes) -> None:
    fuzz_decode(name, data)


@pytest.mark.parametrize("name", CODECS)
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_random_body_behind_a_valid_header(name: str, data: st.DataObject) -> None:
    fuzz_decode(name, data.draw(plausible_payloads(name)))


# --------------------------------------------------------------------------------------------------
# (b) valid payloads, mutated
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CODECS)
@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_valid_payloads_round_trip_the_header(name: str, data: st.DataObject) -> None:
    """Sanity of the generator: unmutated payloads decode to the header's shape and dtype."""
    payload = data.draw(valid_payloads(name))
    out = check_decode(lambda p: decoder(name).decode(p), payload)
    assert out is not None
    check_values(name, payload, out)


@pytest.mark.parametrize("name", CODECS)
@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_mutated_payloads(name: str, data: st.DataObject) -> None:
    payload = data.draw(valid_payloads(name))
    fuzz_decode(name, data.draw(mutated(payload, name)))


@pytest.mark.parametrize("name", CODECS)
def test_every_single_bit_flip(name: str) -> None:
    """Exhaustive: every bit of a few small payloads (one per parameter variant), flipped alone."""
    g = torch.Generator().manual_seed(3)
    for params in variants(name):
        nonneg = name in NONNEG_UNLESS_SIGNED and not params.get("signed", False)
        x = torch.randn(2, 8, generator=g)
        x = x.abs() if nonneg else x
        payload = create_codec(name, **params).encode(x)
        for i in range(min(len(payload), 96)):
            for bit in range(8):
                b = bytearray(payload)
                b[i] ^= 1 << bit
                fuzz_decode(name, bytes(b))


@pytest.mark.parametrize("name", CODECS)
def test_truncation_at_every_position(name: str) -> None:
    """Every strict prefix of a valid payload (inside the fixed header, shape, parameters, body)."""
    g = torch.Generator().manual_seed(4)
    for params in variants(name):
        nonneg = name in NONNEG_UNLESS_SIGNED and not params.get("signed", False)
        x = torch.randn(3, 8, generator=g)
        payload = create_codec(name, **params).encode(x.abs() if nonneg else x)
        for n in range(len(payload)):
            with pytest.raises(CodecError, match="truncated"):
                decoder(name).decode(payload[:n])


# --------------------------------------------------------------------------------------------------
# (c) payloads of one codec fed to another
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CODECS)
@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_payload_of_another_codec(name: str, data: st.DataObject) -> None:
    other = data.draw(st.sampled_from([n for n in CODECS if n != name]))
    payload = data.draw(valid_payloads(other))
    with pytest.raises(CodecError, match="decode_payload"):
        decoder(name).decode(payload)
    # The same bytes relabelled with this codec's id: the body is parsed as this codec's.
    relabelled = bytearray(payload)
    relabelled[5] = codec_id(name)
    fuzz_decode(name, bytes(relabelled))


# --------------------------------------------------------------------------------------------------
# Huge shapes never allocate
# --------------------------------------------------------------------------------------------------
def _with_shape(payload: bytes, shape: tuple[int, ...]) -> bytes:
    """``payload`` with its shape replaced (the parameter block and body are kept)."""
    ndim = payload[7]
    rest = payload[FIXED_HEADER + 4 * ndim :]
    return payload[:7] + struct.pack(f"<B{len(shape)}I", len(shape), *shape) + rest


HUGE_SHAPES = [
    (2**32 - 1,),
    (2**31,),
    (2**31 + 1,),
    (65536, 32769),  # 2**31 + 65536
    (2**32 - 1, 2**32 - 1),
    (2**16, 2**16, 2**16),
    (2**32 - 1,) * 8,
    (3, 2**32 - 1, 5),
]


@pytest.mark.parametrize("name", CODECS)
def test_oversized_shape_is_refused_before_allocating(name: str) -> None:
    params = variants(name)[0]
    x = torch.rand(4, 8)
    payload = create_codec(name, **params).encode(x)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for shape in HUGE_SHAPES:
        assert math.prod(shape) > MAX_NUMEL
        bomb = _with_shape(payload, shape)
        for decode in (decoder(name).decode, decode_payload):
            t0 = time.perf_counter()
            with pytest.raises(CodecError, match="limit") as info:
                decode(bomb)
            assert time.perf_counter() - t0 < 0.5
            assert str(math.prod(shape)) in str(info.value)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 256, f"peak memory grew by {grown_mib:.0f} MiB while refusing huge shapes"


@pytest.mark.parametrize("name", CODECS)
def test_an_empty_shape_with_huge_dimensions_is_refused(name: str) -> None:
    """Found by test_mutated_payloads (powersgd, CI 12-07): a header of shape (0, 3, 2**32-ish) declares no
    element, so the element-count limit passed it, and ``torch.empty`` raised "Stride calculation
    overflowed" from deep inside torch instead of a CodecError."""
    payload = create_codec(name, **variants(name)[0]).encode(torch.rand(4, 8))
    for shape in [(0, 2**31, 2**31), (2**20, 0, 2**20), (0, 2**21)]:
        for decode in (decoder(name).decode, decode_payload):
            with pytest.raises(CodecError, match="no elements, but non-zero dimensions multiplying to"):
                decode(_with_shape(payload, shape), max_numel=FUZZ_MAX_NUMEL)
    if name == "powersgd":  # the falsifying payload itself
        ci = (
            b"FLSC\x01\x03\x00\x07\x00\x02\x02\x00\x00\x00\x03\x00\x00\x00\x00\x00\x01\x0fz|<3M@\xbb\x86|"
            b"\xb2\xbcxC\xba;*\xb01\xbcX%e\xbc"
        )
        with pytest.raises(CodecError):
            decode_payload(ci, max_numel=FUZZ_MAX_NUMEL)
    empty = create_codec(name, **variants(name)[0]).encode(torch.rand(0, 2**20))  # at the limit: decoded
    assert decoder(name).decode(empty, max_numel=FUZZ_MAX_NUMEL).shape == (0, 2**20)


@pytest.mark.parametrize("name", CODECS)
def test_caller_max_numel_is_enforced(name: str) -> None:
    params = variants(name)[0]
    payload = create_codec(name, **params).encode(torch.rand(4, 8))
    with pytest.raises(CodecError, match="limit"):
        decoder(name).decode(payload, max_numel=31)
    assert decoder(name).decode(payload, max_numel=32).shape == (4, 8)


# --------------------------------------------------------------------------------------------------
# Known decoder bugs (strict xfail: they fail today; an XPASS means the codec was fixed)
# --------------------------------------------------------------------------------------------------
def _quant_payload(bits: int, lo: float, hi: float, codes: int) -> bytes:
    """A quant payload for shape (codes,) with every code = 0, built byte by byte."""
    from fl_split.codecs.bitpack import packed_nbytes

    head = struct.pack("<4sBBBBI", b"FLSC", 1, codec_id("quant"), 0, 1, codes)
    return head + struct.pack("<Bff", bits, lo, hi) + bytes(packed_nbytes(codes, bits))


@pytest.mark.parametrize("bits", [1, 8])
def test_quant_refuses_scales_no_encoder_emits(bits: int) -> None:
    # Encoders refuse |x| > 2**64, so min/max beyond that can only come from a corrupted payload.
    with pytest.raises(CodecError, match="scale parameters"):
        decoder("quant").decode(_quant_payload(bits, -3e38, 3e38, 4))
    out = decoder("quant").decode(_quant_payload(bits, -1e19, 1e19, 4))
    assert torch.equal(out, torch.full((4,), -1e19))


def test_sign_refuses_scales_no_encoder_emits() -> None:
    head = struct.pack("<4sBBBBI", b"FLSC", 1, codec_id("sign"), 0, 1, 8)
    with pytest.raises(CodecError, match="scale parameters"):
        decoder("sign").decode(head + struct.pack("<f", 2e38) + bytes(1))
    out = decoder("sign").decode(head + struct.pack("<f", 1e19) + bytes(1))
    assert torch.equal(out, torch.full((8,), 1e19))


@pytest.mark.parametrize("subtractive", [False, True])
def test_dither_fixed_step_output_stays_finite(subtractive: bool) -> None:
    # Largest accepted input and a huge fixed step: levels of +-1 or 2 must not overflow to inf.
    x = torch.tensor([1.8e19, -1.8e19, 1.0, 0.0])
    codec = create_codec("dither", step=1e19, subtractive=subtractive, seed=0)
    out = codec.decode(codec.encode(x))
    assert bool(torch.isfinite(out).all()), f"dither decoded {out.tolist()} from finite {x.tolist()}"
