"""Server batching (one server step over batches that arrive together) and the server-half device."""

from __future__ import annotations

import copy
import dataclasses
import struct

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fl_split.codecs import CodecError, create_codec
from fl_split.config import ConfigError
from fl_split.sl.server import ServerStep, StepInput, decode_step, server_step, server_step_batched
from fl_split.sl.setup import build_halves
from fl_split.sl.transport import InProcessTransport
from fl_split.sl.wire import encode_labels
from fl_split.validate import BadReply
from strategies.split_learning import SplitLearningStrategy
from tests.sl_helpers import small_config

SHAPE = (64, 16, 16)


def _inputs(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor], list[StepInput]]:
    g = torch.Generator().manual_seed(seed)
    codec = create_codec("none")
    acts = [torch.relu(torch.randn(8 + 4 * i, *SHAPE, generator=g)) for i in range(n)]
    labels = [torch.randint(0, 10, (len(a),), generator=g) for a in acts]
    steps = [
        StepInput(codec.encode(a), encode_labels(y, 10), codec, codec, 10, SHAPE, 32)
        for a, y in zip(acts, labels, strict=True)
    ]
    return acts, labels, steps


def _server(lr: float = 0.05) -> tuple[nn.Module, torch.optim.Optimizer]:
    config = small_config()
    half = build_halves(config, seed=1)[1]
    return half, torch.optim.SGD(half.parameters(), lr=lr)


def test_each_client_gets_its_own_step_gradient_and_the_server_steps_on_the_sum() -> None:
    acts, labels, steps = _inputs(3)
    half, opt = _server()
    ref = copy.deepcopy(half)
    results = server_step_batched(half, opt, steps)
    # per batch: the activation gradient of its own mean loss at the starting weights
    for a, y, out in zip(acts, labels, results, strict=True):
        assert isinstance(out, ServerStep)
        x = a.clone().requires_grad_(True)
        loss = F.cross_entropy(copy.deepcopy(ref).train()(x), y)
        loss.backward()
        got = create_codec("none").decode(out.grad_payload)
        assert torch.allclose(got, x.grad, atol=1e-7, rtol=1e-5)
        assert out.loss == pytest.approx(float(loss), rel=1e-5)
        assert out.samples == len(y)
    # the server: one SGD step on the sum of the three mean losses
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    total = sum(F.cross_entropy(ref.train()(a), y) for a, y in zip(acts, labels, strict=True))
    assert isinstance(total, torch.Tensor)
    total.backward()
    ref_opt.step()
    for p, q in zip(half.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_one_batch_is_exactly_the_plain_server_step() -> None:
    _, _, steps = _inputs(1)
    half, opt = _server()
    twin = copy.deepcopy(half)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    (batched,) = server_step_batched(half, opt, steps)
    s = steps[0]
    plain = server_step(
        twin,
        twin_opt,
        s.act_payload,
        s.label_payload,
        uplink=s.uplink,
        downlink=s.downlink,
        num_classes=10,
        sample_shape=SHAPE,
        max_batch=32,
    )
    assert isinstance(batched, ServerStep)
    assert batched.grad_payload == plain.grad_payload and batched.loss == plain.loss
    assert all(torch.equal(p, q) for p, q in zip(half.parameters(), twin.parameters(), strict=True))


def test_a_payload_that_does_not_decode_drops_out_and_the_others_train() -> None:
    _, _, steps = _inputs(3)
    bad = dataclasses.replace(steps[1], act_payload=steps[1].act_payload[:-3])
    half, opt = _server()
    before = [p.detach().clone() for p in half.parameters()]
    results = server_step_batched(half, opt, [steps[0], bad, steps[2]])
    assert isinstance(results[1], CodecError)
    assert isinstance(results[0], ServerStep) and isinstance(results[2], ServerStep)
    assert any(not torch.equal(p, q) for p, q in zip(half.parameters(), before, strict=True))
    (only_bad,) = server_step_batched(half, opt, [bad])  # nothing decodes: nothing steps
    assert isinstance(only_bad, CodecError)


def test_a_batch_that_overflows_batchnorm_statistics_is_refused_and_leaves_no_trace() -> None:
    """Activations of 1e17 (any codec encodes them) make the server's first layer output ~1e20: finite,
    and so is the loss, but they square to inf in BatchNorm's running variance. Batched with two honest
    batches, only that one is refused, and the server half (weights and running statistics) is exactly
    what a step on the two honest batches alone gives."""
    codec, d = create_codec("none"), 16
    g = torch.Generator().manual_seed(3)
    acts = [torch.randn(8, d, generator=g) for _ in range(3)]
    acts[1] = acts[1] * 1e17
    labels = [torch.randint(0, 10, (8,), generator=g) for _ in acts]
    pairs = zip(acts, labels, strict=True)
    steps = [StepInput(codec.encode(a), encode_labels(y, 10), codec, codec, 10, (d,), 32) for a, y in pairs]
    torch.manual_seed(0)
    half = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.Linear(d, 10))
    with torch.no_grad():
        half[0].weight.mul_(1e3)
    twin = copy.deepcopy(half)
    results = server_step_batched(half, torch.optim.SGD(half.parameters(), lr=0.01), steps)
    assert isinstance(results[1], CodecError) and "running statistics overflow" in str(results[1])
    assert isinstance(results[0], ServerStep) and isinstance(results[2], ServerStep)
    server_step_batched(twin, torch.optim.SGD(twin.parameters(), lr=0.01), [steps[0], steps[2]])
    for (k, v), w in zip(half.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.isfinite(v.float()).all() and torch.allclose(v.float(), w.float(), rtol=1e-5, atol=1e-6), k
    # alone, the same batch is refused and the half is left exactly as it was
    before = copy.deepcopy(half.state_dict())
    (alone,) = server_step_batched(half, torch.optim.SGD(half.parameters(), lr=0.01), [steps[1]])
    assert isinstance(alone, CodecError) and "running statistics overflow" in str(alone)
    assert all(torch.equal(v, before[k]) for k, v in half.state_dict().items())


def test_activations_no_codec_could_have_encoded_are_refused() -> None:
    """A client that skips the codec can send 1e20 (finite); no codec encodes above 2**64."""
    codec, d = create_codec("none"), 4
    payload = bytearray(codec.encode(torch.ones(2, d)))
    payload[-4:] = struct.pack("<f", 1e20)
    step = StepInput(bytes(payload), encode_labels(torch.zeros(2, dtype=torch.long), 10), codec, codec, 10, (d,), 32)
    with pytest.raises(BadReply, match=r"above the 1.84e\+19 any codec encodes") as info:
        decode_step(step, torch.device("cpu"))
    assert info.value.reason == "out_of_range"


def test_splitfed2_with_server_batching_steps_once_per_batch_position() -> None:
    cfg = small_config(clients=4, rounds=2, max_steps_per_round=3, batches_per_message=1, server_batching=True)
    strategy = SplitLearningStrategy(cfg)
    strategy.start(InProcessTransport(4))
    for row in strategy.rows:
        # in process every client's reply arrives in the same receive: 4 batches per server step
        assert row["steps"] == 12 and row["server_steps"] == 3
        assert row["dropped"] == 0
    plain = SplitLearningStrategy(small_config(clients=4, rounds=2, max_steps_per_round=3))
    plain.start(InProcessTransport(4))
    assert [r["server_steps"] for r in plain.rows] == [12, 12]
    assert [r["uplink_bytes"] for r in plain.rows] == [r["uplink_bytes"] for r in strategy.rows]


def test_server_batching_learns_digits_like_the_default() -> None:
    # measured: 0.964 (batching) vs 0.972 after 6 rounds; batching is slower in the first rounds
    # (0.63 vs 0.88 after round 2): one server step on the sum of 4 gradients is a 4x larger step
    on = SplitLearningStrategy(small_config(clients=4, rounds=6, server_batching=True))
    on.start(InProcessTransport(4))
    off = SplitLearningStrategy(small_config(clients=4, rounds=6))
    off.start(InProcessTransport(4))
    acc_on, acc_off = on.rows[-1]["test_accuracy"], off.rows[-1]["test_accuracy"]
    assert acc_on > 0.93 and abs(acc_on - acc_off) < 0.05, (acc_on, acc_off)


@pytest.mark.parametrize("mode", ["sequential", "splitfed1"])
def test_server_batching_needs_splitfed2(mode: str) -> None:
    with pytest.raises(ConfigError, match=r"server_batching .* needs mode=splitfed2"):
        small_config(mode=mode, server_batching=True)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu", ""])
def test_server_device_names_are_checked(bad: str) -> None:
    with pytest.raises(ConfigError, match="cpu, cuda or cuda:N"):
        small_config(server_device=bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_cuda_server_without_cuda_is_a_clear_error_before_training() -> None:
    with pytest.raises(ConfigError, match=r"torch.cuda.is_available\(\) is False.*server_device=cpu"):
        SplitLearningStrategy(small_config(server_device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_server_half_trains_and_its_codecs_run_there() -> None:
    strategy = SplitLearningStrategy(small_config(clients=2, rounds=1, server_device="cuda", server_batching=True))
    strategy.start(InProcessTransport(2))
    assert next(strategy.server_half.parameters()).is_cuda
    assert strategy.rows[0]["test_accuracy"] > 0.3
