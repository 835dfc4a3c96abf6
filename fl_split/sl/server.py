"""The server side of a split-learning step, evaluation and FedAvg of halves: pure functions."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fl_split.codecs import Codec, CodecError
from fl_split.codecs.base import MAX_ABS_INPUT
from fl_split.sl.wire import decode_labels, encode_masked
from fl_split.training import synchronize
from fl_split.validate import BadReply


class NonFiniteLoss(ValueError):
    """The server half's loss is NaN or Inf (no step was taken).

    ``bad`` holds the indices of the batches whose loss is not finite.
    """

    def __init__(self, message: str, bad: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.bad = list(bad)


@dataclass(frozen=True)
class ServerStep:
    """Outcome of one server step: the gradient payload for the client, the loss, the batch size."""

    grad_payload: bytes
    loss: float
    samples: int
    codec_s: float = 0.0  #: seconds in decode + encode (the rest of the step is compute)


@dataclass(frozen=True)
class StepInput:
    """One client batch for the server: its uplink payload and labels, and what a valid batch is.

    ``uplink`` is the configured codec (a payload of any other codec is refused); ``downlink`` the
    gradient codec, ``None`` for the ``mask`` downlink (float32 values at the uplink's kept
    positions only, in row-major order, no indices). ``num_classes``, ``sample_shape`` and
    ``max_batch`` bound what decodes: anything else raises ``CodecError`` before any allocation
    beyond ``max_batch`` samples. ``send_gradient`` false (local-loss split learning): no activation
    gradient is computed or encoded, the step's payload is ``b""``.
    """

    act_payload: bytes
    label_payload: bytes
    uplink: Codec
    downlink: Codec | None
    num_classes: int
    sample_shape: tuple[int, ...]
    max_batch: int
    send_gradient: bool = True


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
    device: torch.device | str = "cpu",
) -> ServerStep:
    """Decode a client's activations, run the server half, step, and encode the activation gradient.

    Parameters
    ----------
    half, optimizer:
        The server half this client's batches train (on ``device``), and its optimizer.
    act_payload, label_payload, uplink, downlink, num_classes, sample_shape, max_batch:
        See :class:`StepInput`.
    device:
        Where the payload is decoded, the server half runs and the gradient is encoded.

    Raises
    ------
    CodecError
        If either payload is malformed or does not fit the model, or the batch's loss is not finite
        at finite weights (a :class:`~fl_split.validate.BadReply`): the caller drops the client.
    NonFiniteLoss
        If the loss is NaN/Inf because the server half's own weights are (training diverged);
        nothing was stepped.
    """
    step = StepInput(act_payload, label_payload, uplink, downlink, num_classes, sample_shape, max_batch)
    (out,) = server_step_batched(half, optimizer, [step], device)
    if isinstance(out, CodecError):
        raise out
    return out


def server_step_batched(
    half: nn.Module, optimizer: torch.optim.Optimizer, steps: Sequence[StepInput], device: torch.device | str = "cpu"
) -> list[ServerStep | CodecError]:
    """One server forward/backward/step over the concatenation of several clients' batches.

    The loss is the sum of each batch's mean cross-entropy, so every client gets exactly the
    activation gradient a step of its own batch would have given at these weights, and the server
    half takes one step with the sum of the per-batch gradients (n sequential steps, to first
    order). BatchNorm in the server half sees the concatenation's statistics.

    Returns
    -------
    list
        Per input, its :class:`ServerStep`, or the ``CodecError`` that made it drop out (the
        others are trained without it): a payload that does not decode, activations with NaN/Inf,
        or a batch whose loss is not finite while the server half's weights are (a
        :class:`~fl_split.validate.BadReply` with reason ``non_finite``). ``codec_s`` of each is
        its own decode and encode time.

    Raises
    ------
    NonFiniteLoss
        If a loss is NaN/Inf and the server half's weights are too (training diverged); nothing
        was stepped.
    """
    dev = torch.device(device)
    out: dict[int, ServerStep | CodecError] = {}
    decoded: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
    for i, step in enumerate(steps):
        t0 = time.perf_counter()
        try:
            a, y = decode_step(step, dev)
        except CodecError as exc:
            out[i] = exc
            continue
        decoded.append((i, a, y, time.perf_counter() - t0))
    while decoded:
        try:
            grads, losses = train_on(
                half, optimizer, [d[1] for d in decoded], [d[2] for d in decoded], input_grad=steps[0].send_gradient
            )
        except NonFiniteLoss as exc:
            if not all(bool(torch.isfinite(t).all()) for t in half.state_dict().values()):
                raise  # the server half itself diverged: no client is to blame
            for j in exc.bad:  # finite weights: these batches caused it; train the others without them
                out[decoded[j][0]] = BadReply("non_finite", f"the server's loss on this batch is not finite ({exc})")
            decoded = [d for j, d in enumerate(decoded) if j not in set(exc.bad)]
            continue
        synchronize(dev)  # the backward pass and step are compute, not the first encode's time
        for (i, a, _, decode_s), grad, loss in zip(decoded, grads, losses, strict=True):
            t0 = time.perf_counter()
            payload = encode_gradient(steps[i], grad) if steps[i].send_gradient else b""
            out[i] = ServerStep(payload, loss, int(a.shape[0]), decode_s + time.perf_counter() - t0)
        break
    return [out[i] for i in range(len(steps))]


def decode_step(step: StepInput, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and check one batch: ``(activations, labels)`` on ``device``.

    Raises
    ------
    CodecError
        If a payload is malformed or does not fit the server half; a
        :class:`~fl_split.validate.BadReply` if the activations hold NaN/Inf (``non_finite``) or
        values above ``MAX_ABS_INPUT`` (``out_of_range``: no codec encodes those, so no honest
        client sends them).
    """
    per_sample = 1
    for d in step.sample_shape:
        per_sample *= d
    a = step.uplink.decode(step.act_payload, device=device, max_numel=step.max_batch * per_sample)
    if a.ndim != len(step.sample_shape) + 1 or tuple(a.shape[1:]) != tuple(step.sample_shape) or a.shape[0] < 1:
        raise CodecError(
            f"activations of shape {tuple(a.shape)}; the server half expects "
            f"[N, {', '.join(map(str, step.sample_shape))}]"
        )
    if not bool(torch.isfinite(a).all()):
        raise BadReply("non_finite", f"the activations hold {int((~torch.isfinite(a)).sum())} NaN/Inf value(s)")
    if a.numel() and (big := float(a.abs().max())) > MAX_ABS_INPUT:
        raise BadReply(
            "out_of_range", f"activations of magnitude {big:.3g}, above the {MAX_ABS_INPUT:.3g} any codec encodes"
        )
    y = decode_labels(step.label_payload, step.num_classes, count=a.shape[0]).to(device)
    return a, y


def train_on(
    half: nn.Module,
    optimizer: torch.optim.Optimizer,
    acts: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    *,
    input_grad: bool = True,
) -> tuple[list[torch.Tensor], list[float]]:
    """One optimizer step on the sum of the batches' mean losses; return each batch's input gradient and loss.

    With ``input_grad`` false the input gradient is not computed (local-loss split learning sends none
    back): the gradients returned are empty tensors.

    Raises
    ------
    NonFiniteLoss
        If a batch's loss is NaN/Inf, or it overflows the running statistics of a BatchNorm (its
        ``bad`` names which batches are bad on their own); nothing was stepped and the buffers are
        as they were.
    """
    a = acts[0] if len(acts) == 1 else torch.cat(list(acts))
    y = labels[0] if len(labels) == 1 else torch.cat(list(labels))
    a.requires_grad_(input_grad)
    half.train()
    saved = [b.detach().clone() for b in half.buffers()]  # BatchNorm statistics: the forward updates them
    logits = half(a)
    if len(acts) == 1:
        per_batch = [F.cross_entropy(logits, y)]
    else:
        per_sample = F.cross_entropy(logits, y, reduction="none")
        per_batch = [chunk.mean() for chunk in per_sample.split([len(t) for t in labels])]
    values = [float(v.detach()) for v in per_batch]
    bad = [j for j, v in enumerate(values) if not math.isfinite(v)]
    overflowed = not _finite_buffers(half)  # |a| ~ 1e19 squares to inf in the running variance, loss still finite
    if bad or overflowed:
        # batched: one batch's statistics reach every loss of the step, so find who is bad on its own
        bad = _bad_alone(half, saved, acts, labels) if len(acts) > 1 else [0]
        _restore_buffers(half, saved)  # a refused step leaves no trace in the running statistics
        what = "running statistics overflow" if math.isfinite(values[bad[0]]) else f"loss is {values[bad[0]]}"
        raise NonFiniteLoss(f"the server half's {what} on a batch of {len(labels[bad[0]])}", bad)
    loss = per_batch[0] if len(per_batch) == 1 else torch.stack(per_batch).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if not input_grad:
        return [a.new_empty(0) for _ in acts], values
    grad = a.grad
    assert grad is not None
    grads = [grad] if len(acts) == 1 else list(grad.split([len(t) for t in acts]))
    return grads, values


def _finite_buffers(half: nn.Module) -> bool:
    return all(bool(torch.isfinite(b).all()) for b in half.buffers() if b.is_floating_point())


def _restore_buffers(half: nn.Module, saved: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, v in zip(half.buffers(), saved, strict=True):
            b.copy_(v)


@torch.no_grad()
def _bad_alone(
    half: nn.Module, saved: Sequence[torch.Tensor], acts: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
) -> list[int]:
    """The batches whose own loss or running statistics are not finite (all, if none is on its own)."""
    bad = []
    for j, (a, y) in enumerate(zip(acts, labels, strict=True)):
        _restore_buffers(half, saved)
        if not math.isfinite(float(F.cross_entropy(half(a.detach()), y))) or not _finite_buffers(half):
            bad.append(j)
    return bad or list(range(len(acts)))


def encode_gradient(step: StepInput, grad: torch.Tensor) -> bytes:
    """The downlink payload for ``grad``, the gradient of ``step``'s activations."""
    if step.downlink is None:
        return encode_masked(grad, step.uplink.support(step.act_payload, device=grad.device))
    return step.downlink.encode(grad)


@torch.no_grad()
def evaluate(
    client_half: nn.Module,
    server_half: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    codec: Codec | None = None,
) -> float:
    """Test accuracy of ``server(client(x))``, through ``codec.decode(codec.encode(·))`` when given.

    The client half runs where ``x`` is; the activations move to the server half's device.
    """
    client_half.eval()
    server_half.eval()
    device = next(server_half.parameters()).device
    correct = 0
    for start in range(0, len(y), batch_size):
        a = client_half(x[start : start + batch_size])
        if codec is not None:
            a = codec.decode(codec.encode(a), device=device)
        logits = server_half(a.to(device))
        correct += int((logits.argmax(1).cpu() == y[start : start + batch_size]).sum())
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
        acc = torch.zeros(dst.shape, dtype=torch.float64, device=dst.device)
        for state, w in zip(states, weights, strict=True):
            acc += state[i].to(dst.device, torch.float64) * (w / total)
        dst.copy_(acc.round() if not dst.dtype.is_floating_point else acc)
