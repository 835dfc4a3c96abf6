"""The client side of a split-learning step, as pure functions of (state, message fields).

A client owns the shallow half. Between messages its whole state is a :class:`ClientState`
(weights, momentum, data cursor, pending batches): plain ints and bytes that Flower keeps in
``context.state`` (and the in-process engine keeps in a dict), so nothing depends on a process
surviving. The autograd graph cannot be kept, so applying a gradient recomputes the forward of
its batch (cheap: the shallow half) with the current weights.

Protocol (one round trip per step, ``k = batches_per_message``)::

    sl_begin (config: the task, run, round, weights[, momentum], returns)  ->  acts/labels of the next k batches
    sl_step  (grads of the pending batches) ->  apply them, step; acts/labels of the next k
                                               ... or, when the round's batches are done,
                                               done=True, the fields ``returns`` named, counts

With ``gradients=local`` (local-loss split learning) the client half has an auxiliary head and steps on
its loss as it goes: ``send_next`` trains each batch, and sends the activations (computed before the
batch's step) of every ``send_every``-th batch of the round; ``sl_step`` carries no gradient (an empty
list: the server has trained on the batches) and only asks for the next ones.

The client never reads the server's mode: ``sl_begin`` says where to start (the weights, and the
optimizer state: the momentum it carries, or fresh SGD state when it carries none) and what to
return (``returns``: ``["weights"]`` or ``["weights", "momentum"]``).
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from fl_split.codecs import Codec, CodecError, codec_from_spec
from fl_split.data import dataset_info
from fl_split.models.aux_heads import WithAuxHead
from fl_split.sl.config import MASK, SLClientTask
from fl_split.sl.setup import (
    batch_indices,
    batches_per_epoch,
    cached_client_half,
    make_sgd,
    momentum_buffers,
    set_momentum,
)
from fl_split.sl.wire import (
    ACTIVATIONS,
    GRADIENTS,
    LABELS,
    MOMENTUM,
    PARTITION,
    RETURNS,
    WEIGHTS,
    decode_masked,
    decode_tensors,
    decode_weights,
    encode_labels,
    encode_tensors,
)
from fl_split.training import client_data_on, client_device, synchronize

BEGIN, STEP = "sl_begin", "sl_step"


@dataclass
class ClientState:
    """Everything a client keeps between messages (serialised by :meth:`to_fields`)."""

    config: str = ""  #: the task ``sl_begin`` sent (:class:`~fl_split.sl.config.SLClientTask`), JSON
    run: str = ""  #: the run's identity ``sl_begin`` sent: another one (a new run on this node) restarts the cursor
    weights: list[bytes] = field(default_factory=list)  #: client-half state_dict, ``none`` payloads
    momentum: list[bytes] = field(default_factory=list)  #: SGD momentum per parameter (``b""``: none yet)
    epoch: int = 0  #: cursor: current epoch over the partition
    pos: int = 0  #: cursor: next batch within the epoch
    left: int = 0  #: batches still to send this round
    pending: list[int] = field(default_factory=list)  #: sent, not yet applied: [epoch, batch, epoch, batch, ...]
    pending_uplink: list[bytes] = field(default_factory=list)  #: their uplink payloads (mask downlink only)
    round: int = 0
    samples: int = 0  #: samples trained this round (server gradients applied, or local-loss steps)
    steps: int = 0  #: optimizer steps this round
    skipped: int = 0  #: batches the server dropped this round
    returns: list[str] = field(default_factory=lambda: [WEIGHTS])  #: what the done reply carries

    def to_fields(self) -> dict[str, Any]:
        """Plain fields (str, int, bytes and lists of them) for ``context.state``."""
        return dict(self.__dict__)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> ClientState:
        """Inverse of :meth:`to_fields`; missing fields take their defaults."""
        known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@functools.lru_cache(maxsize=8)
def client_task(text: str) -> SLClientTask:
    """The task ``sl_begin`` sent, parsed and checked once per process (every message of a round reuses it).

    Raises
    ------
    ConfigError
        The task is not JSON, or holds an unknown key or a bad value: a server of another version, or a
        message that is not fl-split's (the error names the key).
    """
    return SLClientTask.from_json(text, "split-learning task sent in sl_begin")


class _Runtime:
    """The live objects rebuilt from a :class:`ClientState` for one message."""

    def __init__(self, state: ClientState, partition_id: int, num_partitions: int, *, own: bool = False) -> None:
        self.state = state
        self.task = client_task(state.config)
        self.partition_id = partition_id
        #: where the half, its batches and the codecs run; payloads leave it once, as bytes
        self.device = client_device(self.task.client_device)
        # the per-process cached module is reloaded by every message; a live round needs its own copy
        half = cached_client_half(self.task, self.device)
        self.half = copy.deepcopy(half) if own else half
        self.half.train()
        self.params = list(self.half.parameters())
        self.tensors = list(self.half.state_dict(keep_vars=True).values())
        self.optimizer = make_sgd(self.params, self.task)
        self.x, self.y = client_data_on(self.task, partition_id, num_partitions, self.device)
        self.uplink: Codec = codec_from_spec(self.task.uplink)
        down = self.task.downlink
        self.downlink: Codec | None = None if down == MASK else codec_from_spec(down)
        self.num_classes = dataset_info(self.task.dataset).num_classes
        self.local = self.task.gradients == "local"
        self.codec_s = 0.0  # seconds spent in codecs during this message

    # ------------------------------------------------------------- weights and momentum
    def load(self, weights: list[bytes], momentum: list[bytes]) -> None:
        decoded = decode_weights(weights, self.tensors, "client-half weights")
        with torch.no_grad():
            for dst, src in zip(self.tensors, decoded, strict=True):
                dst.copy_(src)
        if momentum:
            bufs = decode_tensors(momentum, self.params, "client-half momentum", allow_missing=True)
            set_momentum(self.optimizer, self.params, [None if b is None else b.to(self.device) for b in bufs])

    def save(self) -> None:
        self.state.weights = encode_tensors(self.tensors)
        self.state.momentum = encode_tensors(momentum_buffers(self.optimizer, self.params))

    # ------------------------------------------------------------- batches
    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch_indices(len(self.y), self.task.batch_size, self.task.seed, self.partition_id, epoch, index)
        idx = idx.to(self.device)
        return self.x[idx], self.y[idx]

    def send_next(self) -> dict[str, Any]:
        """Forward the next ``k`` batches of the round; their payloads for the server."""
        if self.local:
            return self.train_and_send()
        st, k = self.state, self.task.batches_per_message
        nb = batches_per_epoch(len(self.y), self.task.batch_size)
        acts, labels = [], []
        for _ in range(min(k, st.left)):
            x, y = self.batch(st.epoch, st.pos)
            with torch.no_grad():
                out = self.half(x)
            payload = self.encode_uplink(out)
            acts.append(payload)
            labels.append(encode_labels(y, self.num_classes))
            st.pending += [st.epoch, st.pos]
            if self.downlink is None:
                st.pending_uplink.append(payload)
            self.advance(nb)
        return {ACTIVATIONS: acts, LABELS: labels, "done": False}

    def encode_uplink(self, out: torch.Tensor) -> bytes:
        """The uplink payload of activations ``out``, its time counted in :attr:`codec_s`."""
        synchronize(out.device)  # the forward pass is compute, not codec time
        t0 = time.perf_counter()
        try:
            return self.uplink.encode(out)
        finally:
            self.codec_s += time.perf_counter() - t0

    def advance(self, per_epoch: int) -> None:
        """Move the cursor past the batch just taken (one fewer left this round; the next epoch after the last)."""
        st = self.state
        st.left -= 1
        st.pos += 1
        if st.pos == per_epoch:
            st.epoch, st.pos = st.epoch + 1, 0

    def train_and_send(self) -> dict[str, Any]:
        """Local-loss SL: train the next batches on the auxiliary head's loss, one step each, until ``k``
        activations are collected and the next batch would be sent; the payloads of the sent ones.

        Batch ``j`` of the round (``j = 0, 1, ...``) is sent when ``j % send_every == 0``, with the
        activations its step's forward computed (before the step); the batches after the round's last
        sent one are trained in the same call, so the done reply follows the last acknowledgement.
        """
        st, k, h = self.state, self.task.batches_per_message, self.task.send_every
        nb = batches_per_epoch(len(self.y), self.task.batch_size)
        if not isinstance(self.half, WithAuxHead):  # pragma: no cover - build_sl_halves adds the head
            raise TypeError("gradients=local needs a client half with an auxiliary head")
        head = self.half.head
        acts: list[bytes] = []
        labels: list[bytes] = []
        while st.left > 0 and not (st.steps % h == 0 and len(acts) == k):
            send = st.steps % h == 0
            x, y = self.batch(st.epoch, st.pos)
            out = self.half(x)
            loss = F.cross_entropy(head(out), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            st.steps += 1
            st.samples += x.shape[0]
            if send:
                acts.append(self.encode_uplink(out.detach()))
                labels.append(encode_labels(y, self.num_classes))
            self.advance(nb)
        return {ACTIVATIONS: acts, LABELS: labels, "done": False}

    def apply(self, grads: list[bytes]) -> None:
        """Apply the server's gradients to the pending batches, one optimizer step each, in order."""
        st = self.state
        if self.local:  # the batches were trained when they were sent; the server only acknowledges them
            if grads:
                raise CodecError(f"got {len(grads)} gradients, but this client trains on its local loss")
            return
        pending = list(zip(st.pending[::2], st.pending[1::2], strict=True))
        if len(grads) != len(pending):
            raise CodecError(f"got {len(grads)} gradients for {len(pending)} pending batches")
        for j, ((epoch, index), g) in enumerate(zip(pending, grads, strict=True)):
            if not g:  # the server dropped this batch (its payload did not decode)
                st.skipped += 1
                continue
            x, _ = self.batch(epoch, index)
            buffers = [b.detach().clone() for b in self.half.buffers()]
            out = self.half(x)  # recompute: same weights as the send for k = 1 (exact SL)
            grad = self.decode_gradient(g, out, j)
            self.optimizer.zero_grad(set_to_none=True)
            out.backward(grad)  # straight-through: decode∘encode treated as the identity
            with torch.no_grad():  # the send's forward already updated BN statistics: undo this one
                for b, saved in zip(self.half.buffers(), buffers, strict=True):  # (after backward: BN saves them)
                    b.copy_(saved)
            self.optimizer.step()
            st.steps += 1
            st.samples += x.shape[0]
        st.pending, st.pending_uplink = [], []

    def decode_gradient(self, payload: bytes, out: torch.Tensor, j: int) -> torch.Tensor:
        synchronize(out.device)  # the recomputed forward and the last step are compute, not decode time
        t0 = time.perf_counter()
        try:
            return self._decode_gradient(payload, out, j)
        finally:
            synchronize(out.device)  # the decode's own kernels
            self.codec_s += time.perf_counter() - t0

    def _decode_gradient(self, payload: bytes, out: torch.Tensor, j: int) -> torch.Tensor:
        if self.downlink is not None:
            grad = self.downlink.decode(payload, max_numel=out.numel(), device=out.device)
        else:  # mask: the values at the uplink's kept positions, in row-major order
            grad = decode_masked(payload, self.uplink.support(self.state.pending_uplink[j], device=out.device))
        if tuple(grad.shape) != tuple(out.shape):
            raise CodecError(f"gradient of shape {tuple(grad.shape)} for activations of shape {tuple(out.shape)}")
        return grad.to(out.device, out.dtype)


def client_handle(
    kind: str, fields: dict[str, Any], state: ClientState | None, partition_id: int, num_partitions: int
) -> tuple[ClientState, dict[str, Any]]:
    """Handle one server message; return the new state and the reply fields.

    Parameters
    ----------
    kind:
        ``"sl_begin"`` or ``"sl_step"``.
    fields:
        The message fields (see the module docstring).
    state:
        The state left by the previous message (``None`` on a node's first message).
    partition_id, num_partitions:
        This node's data partition (Flower's ``partition-id`` / ``num-partitions`` node config).
    """
    t0 = time.perf_counter()
    if kind == BEGIN:
        state, rt, reply = _begin(fields, state, partition_id, num_partitions)
    elif kind == STEP:
        if state is None or not state.config:
            raise RuntimeError("sl_step before sl_begin: this node holds no split-learning state")
        rt = _Runtime(state, partition_id, num_partitions)
        rt.load(state.weights, state.momentum)
        reply = _step(rt, list(fields.get(GRADIENTS, [])))  # to_record leaves an empty list out (local loss)
        if not reply["done"]:
            rt.save()  # after send_next: its forward updates BatchNorm statistics
    else:
        raise ValueError(f"unknown split-learning message {kind!r}; expected {BEGIN!r} or {STEP!r}")
    return state, _timed(reply, rt, t0)


class ClientRound:
    """One client's round with its half kept live between steps (the ``stream`` transport).

    The same steps as :func:`client_handle`, without serialising the half into the state after every
    step: the state is written once, when the round is done. Same arithmetic, so the same results.
    """

    def __init__(self, fields: dict[str, Any], state: ClientState | None, partition_id: int, num_partitions: int):
        t0 = time.perf_counter()
        self.state, self._rt, reply = _begin(fields, state, partition_id, num_partitions, own=True)
        #: the reply to ``sl_begin``: the first batches' payloads
        self.first_reply = _timed(reply, self._rt, t0)

    def step(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Apply one gradient frame; the next batches' payloads, or the done reply (the state is saved then)."""
        t0 = time.perf_counter()
        self._rt.codec_s = 0.0
        return _timed(_step(self._rt, list(fields.get(GRADIENTS, []))), self._rt, t0)


def _timed(reply: dict[str, Any], rt: _Runtime, t0: float) -> dict[str, Any]:
    reply["t_client"] = time.perf_counter() - t0  # seconds in this handler, for the time breakdown
    reply["t_codec"] = rt.codec_s
    return reply


def _begin(
    fields: dict[str, Any], state: ClientState | None, partition_id: int, num_partitions: int, *, own: bool = False
) -> tuple[ClientState, _Runtime, dict[str, Any]]:
    config, run = str(fields["config"]), str(fields.get("run", ""))
    if state is None or state.config != config or state.run != run:
        state = ClientState(config=config, run=run)  # a node's first round of this run: a fresh cursor
    state.returns = _returns(fields.get(RETURNS, [WEIGHTS]))
    rt = _Runtime(state, partition_id, num_partitions, own=own)
    rt.load(list(fields[WEIGHTS]), list(fields.get(MOMENTUM, [])))  # no momentum: fresh optimizer state
    nb = batches_per_epoch(len(rt.y), rt.task.batch_size)
    cap = rt.task.max_steps_per_round
    state.left = nb * rt.task.local_epochs
    state.left = min(state.left, cap) if cap else state.left
    state.round, state.samples, state.steps, state.skipped = int(fields["round"]), 0, 0, 0
    state.pending, state.pending_uplink = [], []
    reply = rt.send_next()
    rt.save()
    return state, rt, reply


def _step(rt: _Runtime, grads: list[bytes]) -> dict[str, Any]:
    """Apply ``grads``; the next batches, or (the round's batches done) save and the done reply."""
    rt.apply(grads)
    if rt.state.left > 0:
        return rt.send_next()
    rt.save()
    return done_reply(rt.state, rt.partition_id)


def _returns(value: Any) -> list[str]:
    """The ``returns`` field of ``sl_begin``, checked: the weights, and optionally the momentum."""
    names = list(value) if isinstance(value, list | tuple) else [value]
    if WEIGHTS not in names or any(n not in (WEIGHTS, MOMENTUM) for n in names):
        raise ValueError(f"sl_begin asks the client to return {names!r}; it can return {WEIGHTS!r} and {MOMENTUM!r}")
    return [str(n) for n in names]


def done_reply(state: ClientState, partition_id: int) -> dict[str, Any]:
    """The round's last reply: what ``sl_begin`` asked for (weights[, momentum]) as just saved, and counts."""
    reply: dict[str, Any] = {
        "done": True,
        WEIGHTS: state.weights,
        "samples": state.samples,
        "steps": state.steps,
        "skipped": state.skipped,
        PARTITION: partition_id,
    }
    if MOMENTUM in state.returns:
        reply[MOMENTUM] = state.momentum
    return reply
