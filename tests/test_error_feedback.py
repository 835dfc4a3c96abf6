"""ErrorFeedback: residual bookkeeping, memory accounting, and the telescoping-sum property."""

from __future__ import annotations

import pytest
import torch

from fl_split.codecs import ErrorFeedback, create_codec


def test_sum_of_decoded_plus_residual_equals_sum_of_inputs() -> None:
    ef = ErrorFeedback(create_codec("topk", keep=0.05))
    g = torch.Generator().manual_seed(0)
    total_in = torch.zeros(500)
    total_out = torch.zeros(500)
    for _ in range(20):
        x = torch.randn(500, generator=g)
        total_in += x
        total_out += ef.decode(ef.encode(x, key="w"))
    residual = ef.residual("w")
    assert residual is not None
    torch.testing.assert_close(total_out + residual, total_in, atol=1e-4, rtol=0)


def test_ef_sends_everything_eventually() -> None:
    # a constant signal through 5%-top-k: without EF 95 % is never sent; with EF the average converges
    # (the error of the running mean decays like 1/steps: 0.13 at 400 steps for keep 0.01, measured)
    x = torch.linspace(0.1, 1.0, 1000)
    codec = create_codec("topk", keep=0.05)
    ef = ErrorFeedback(codec)
    steps = 200
    sent = sum(ef.decode(ef.encode(x, key=0)) for _ in range(steps))
    plain = codec.decode(codec.encode(x)) * steps
    err_ef = float((sent / steps - x).norm() / x.norm())
    err_plain = float((plain / steps - x).norm() / x.norm())
    assert err_ef < 0.1 < err_plain


def test_streams_are_independent_and_memory_is_measured() -> None:
    ef = ErrorFeedback(create_codec("sign"))
    for client in range(10):
        ef.encode(torch.randn(32, 16), key=("client", client))
    assert ef.num_streams == 10
    assert ef.residual_nbytes == 10 * 32 * 16 * 4
    half = ErrorFeedback(create_codec("sign"), residual_dtype=torch.bfloat16)
    half.encode(torch.randn(32, 16), key=0)
    assert half.residual_nbytes == 32 * 16 * 2
    ef.reset(("client", 3))
    assert ef.num_streams == 9
    ef.reset(all_streams=True)
    assert ef.num_streams == 0 and ef.residual_nbytes == 0


def test_shape_change_on_a_stream_is_an_error() -> None:
    ef = ErrorFeedback(create_codec("topk", keep=0.1))
    ef.encode(torch.randn(10), key="a")
    with pytest.raises(ValueError, match="reset"):
        ef.encode(torch.randn(11), key="a")


def test_payload_decodes_without_the_wrapper() -> None:
    ef = ErrorFeedback(create_codec("quant", bits=4))
    x = torch.randn(3, 4)
    payload = ef.encode(x, key="k")
    torch.testing.assert_close(create_codec("quant").decode(payload), ef.decode(payload))


def test_wraps_only_codecs() -> None:
    with pytest.raises(TypeError, match="Codec"):
        ErrorFeedback("topk")  # type: ignore[arg-type]
