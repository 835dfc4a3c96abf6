"""The server side of a split-learning step, evaluation and FedAvg of halves: pure functions."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fl_split.codecs import Codec, CodecError
from fl_split.sl.wire import decode_labels, encode_masked


class NonFiniteLoss(ValueError):
    """The server half's loss is NaN or Inf: training has diverged (no step was taken)."""


@dataclass(frozen=True)
class ServerStep:
    """Outcome of one server step: the gradient payload for the client, the loss, the batch size."""

    grad_payload: bytes
    loss: float
    samples: int
    codec_s: float = 0.0  #: seconds in decode + encode (the rest of the step is compute)


def server_step(
    half: nn.Module,
    optimizer: torch.optim.Optimizer,
    act_payload: bytes,
    label_payload: bytes,
    *,
    uplink: Codec,
    downlink: Codec | None,
    num_classes: int,
    sample_shape: tuple[int, ...],
    max_batch: int,
) -> ServerStep:
    """Decode a client's activations, run the server half, step, and encode the activation gradient.

    Parameters
    ----------
    half, optimizer:
        The server half this client's batches train, and its optimizer.
    act_payload, label_payload:
        The client's uplink payload and its labels.
    uplink:
        The configured uplink codec: a payload of any other codec is refused.
    downlink:
        Codec for the gradient; ``None`` for the ``mask`` downlink (float32 values at the uplink's
        kept positions only, in row-major order, no indices).
    num_classes, sample_shape, max_batch:
        What a valid batch looks like; anything else raises ``CodecError`` before any allocation
        beyond ``max_batch`` samples.

    Raises
    ------
    CodecError
        If either payload is malformed or does not fit the model: the caller drops the step.
    NonFiniteLoss
        If the loss is NaN/Inf (training diverged); nothing was stepped.
    """
    per_sample = 1
    for d in sample_shape:
        per_sample *= d
    t0 = time.perf_counter()
    a = uplink.decode(act_payload, max_numel=max_batch * per_sample)
    codec_s = time.perf_counter() - t0
    if a.ndim != len(sample_shape) + 1 or tuple(a.shape[1:]) != tuple(sample_shape) or a.shape[0] < 1:
        raise CodecError(
            f"activations of shape {tuple(a.shape)}; the server half expects [N, {', '.join(map(str, sample_shape))}]"
        )
    y = decode_labels(label_payload, num_classes, count=a.shape[0])
    a.requires_grad_(True)
    half.train()
    loss = F.cross_entropy(half(a), y)
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLoss(f"the server half's loss is {float(loss)} on a batch of {a.shape[0]}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    grad = a.grad
    assert grad is not None
    t0 = time.perf_counter()
    if downlink is None:
        grad_payload = encode_masked(grad, uplink.support(act_payload))
    else:
        grad_payload = downlink.encode(grad)
    codec_s += time.perf_counter() - t0
    return ServerStep(grad_payload, float(loss.detach()), int(a.shape[0]), codec_s)


@torch.no_grad()
def evaluate(
    client_half: nn.Module,
    server_half: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    codec: Codec | None = None,
) -> float:
    """Test accuracy of ``server(client(x))``, through ``codec.decode(codec.encode(·))`` when given."""
    client_half.eval()
    server_half.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        a = client_half(x[start : start + batch_size])
        if codec is not None:
            a = codec.decode(codec.encode(a))
        correct += int((server_half(a).argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(len(y), 1)


@torch.no_grad()
def fedavg_into(target: nn.Module, states: Sequence[Sequence[torch.Tensor]], weights: Sequence[float]) -> None:
    """Write the weighted average of ``states`` (tensor lists in ``state_dict`` order) into ``target``.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are averaged in float64 and rounded.
    """
    if not states:
        return
    total = float(sum(weights))
    for i, dst in enumerate(target.state_dict(keep_vars=True).values()):
        acc = torch.zeros(dst.shape, dtype=torch.float64)
        for state, w in zip(states, weights, strict=True):
            acc += state[i].to(torch.float64) * (w / total)
        dst.copy_(acc.round() if not dst.dtype.is_floating_point else acc)
