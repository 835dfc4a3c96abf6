"""The split-learning server strategy: owns the server half, its optimizer and the round loop.

It talks to clients only through a :class:`~fl_split.sl.transport.Transport`, so the same loop
runs over Flower messages (:mod:`strategies.flower_transport`, in a ServerApp) and in process
(:class:`~fl_split.sl.transport.InProcessTransport`). The step maths lives in
:mod:`fl_split.sl.server` and :mod:`fl_split.sl.client`.

Modes differ only in which server half a client's batches train and how halves are merged:

``sequential``
    One client at a time, in sampled order; the client half (and its SGD momentum) is handed on
    through the server; one shared server half. Vanilla split learning.
``splitfed1``
    Sampled clients in parallel, each training its own copy of the server half; both halves are
    FedAvg'd (weighted by samples) at the end of the round.
``splitfed2``
    Sampled clients in parallel, one shared server half stepped in arrival order; client halves
    FedAvg'd at the end of the round. With ``server_batching``, the batches that arrive in one
    receive are stepped together: one forward/backward over their concatenation
    (:func:`~fl_split.sl.server.server_step_batched`).

The server half lives on ``server_device`` (``cpu``, ``cuda``, ``cuda:N``): payloads are decoded
there and gradients encoded from there; the global client half stays on the CPU.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fl_split.codecs import Codec, CodecError, codec_from_spec
from fl_split.config import ConfigError, config_digest
from fl_split.data import dataset_info
from fl_split.metrics import RunWriter
from fl_split.sl.client import BEGIN, STEP
from fl_split.sl.config import MASK
from fl_split.sl.server import ServerStep, StepInput, evaluate, fedavg_into, server_step_batched
from fl_split.sl.setup import (
    build_halves,
    check_model_fits_data,
    load_split,
    make_sgd,
    momentum_buffers,
    set_momentum,
)
from fl_split.sl.transport import Reply, Transport
from fl_split.sl.wire import ACTIVATIONS, GRADIENTS, LABELS, MOMENTUM, WEIGHTS, decode_weights, encode_tensors

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """The run cannot go on: the weights went non-finite, or every client of a round failed."""


@dataclass
class _Session:
    """One client's part in the current round."""

    node: int
    server: nn.Module
    optimizer: torch.optim.Optimizer
    weights: list[torch.Tensor] | None = None
    momentum: list[bytes] = field(default_factory=list)
    samples: int = 0
    failed: bool = False


@dataclass
class _RoundCounters:
    bytes: dict[str, int] = field(default_factory=dict)
    loss_sum: float = 0.0
    samples: int = 0
    steps: int = 0
    server_steps: int = 0
    dropped: int = 0
    failed_clients: int = 0
    errors: list[str] = field(default_factory=list)
    messages: int = 0
    #: seconds: server_compute, server_codec, client (handler wall, summed over clients),
    #: client_codec, transport (inside send/receive: waiting on Flower, or the in-process client)
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def add(self, direction: str, nbytes: dict[str, int]) -> None:
        for cat, n in nbytes.items():
            key = f"{direction}_{cat}_bytes"
            self.bytes[key] = self.bytes.get(key, 0) + n

    def total(self, direction: str) -> int:
        return sum(n for k, n in self.bytes.items() if k.startswith(direction + "_"))


class SplitLearningStrategy:
    """Split-learning orchestration over any transport (see the module docstring for the modes).

    Parameters
    ----------
    config:
        A resolved split-learning config (:func:`fl_split.sl.config.load_sl_config`).
    writer:
        Where per-round metrics go (``None``: keep them in :attr:`rows` only).
    on_round:
        Called with each round's metrics row (progress display).
    keep_history:
        Keep a copy of the global client half after every round in :attr:`client_history`
        (tests compare engines with it).
    """

    def __init__(
        self,
        config: dict[str, Any],
        writer: RunWriter | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        keep_history: bool = False,
    ) -> None:
        self.config = config
        self.writer = writer
        self.on_round = on_round
        self.keep_history = keep_history
        self.sample_shape = check_model_fits_data(config)
        self.num_classes = dataset_info(str(config["dataset"])).num_classes
        self.device = server_device(str(config["server_device"]))
        self.client_half, server_half = build_halves(config, seed=int(config["seed"]))
        self.server_half = server_half.to(self.device)
        self.uplink: Codec = codec_from_spec(str(config["uplink"]))
        self.downlink: Codec | None = None if config["downlink"] == MASK else codec_from_spec(str(config["downlink"]))
        self.server_optimizer = make_sgd(self.server_half.parameters(), config)
        self.client_momentum: list[bytes] = []  # handed on in sequential mode
        self._server_momentum: dict[int, list[torch.Tensor | None]] = {}  # splitfed1: per client copy
        self.x_test, self.y_test = load_split(config, "test")
        self.rng = random.Random(int(config["seed"]))
        self.rows: list[dict[str, Any]] = []
        self.client_history: list[list[torch.Tensor]] = []
        self._config_json = config_digest(config)

    # ------------------------------------------------------------------ helpers
    def sample(self, nodes: list[int]) -> list[int]:
        """The clients of one round: ``max(1, round(fraction · n))`` drawn without replacement."""
        nodes = sorted(nodes)
        k = max(1, round(float(self.config["fraction"]) * len(nodes)))
        return sorted(self.rng.sample(nodes, k)) if k < len(nodes) else nodes

    def _sessions(self, nodes: list[int]) -> list[_Session]:
        if self.config["mode"] != "splitfed1":
            return [_Session(n, self.server_half, self.server_optimizer) for n in nodes]
        out = []
        for n in nodes:
            copy_ = copy.deepcopy(self.server_half)
            opt = make_sgd(copy_.parameters(), self.config)
            set_momentum(opt, copy_.parameters(), self._server_momentum.get(n, []))
            out.append(_Session(n, copy_, opt))
        return out

    # ------------------------------------------------------------------ the loop
    def start(self, transport: Transport) -> list[dict[str, Any]]:
        """Run every round over ``transport``; return the per-round metrics rows."""
        t0 = time.perf_counter()
        cum_up = cum_down = 0
        nodes = transport.node_ids()
        if not nodes:
            raise RuntimeError("no clients are connected: nothing to train")
        if len(nodes) != int(self.config["clients"]):
            log.warning(
                "%d nodes are connected but the config says clients=%d: training on the %d nodes",
                len(nodes),
                self.config["clients"],
                len(nodes),
            )
        for rnd in range(1, int(self.config["rounds"]) + 1):
            counters = _RoundCounters()
            sampled = self.sample(nodes)
            waves = [[n] for n in sampled] if self.config["mode"] == "sequential" else [sampled]
            finished: list[_Session] = []
            t_train = time.perf_counter()
            for wave in waves:
                finished += self._run_wave(transport, wave, rnd, counters)
            train_s = time.perf_counter() - t_train
            if not any(s.weights is not None for s in finished):
                raise TrainingFailed(
                    f"round {rnd}: no client finished ({counters.failed_clients} failed); first error: "
                    f"{counters.errors[0] if counters.errors else 'none reported'}"
                )
            self._merge(finished)
            self._check_finite(rnd, counters)
            acc = evaluate(
                self.client_half, self.server_half, self.x_test, self.y_test, self._eval_batch(), self.uplink
            )
            acc_dense = evaluate(self.client_half, self.server_half, self.x_test, self.y_test, self._eval_batch())
            up, down = counters.total("uplink"), counters.total("downlink")
            cum_up, cum_down = cum_up + up, cum_down + down
            row = {
                "round": rnd,
                "train_loss": counters.loss_sum / counters.samples if counters.samples else None,
                "test_accuracy": acc,
                "test_accuracy_dense": acc_dense,
                "uplink_bytes": up,
                "downlink_bytes": down,
                "cum_uplink_bytes": cum_up,
                "cum_downlink_bytes": cum_down,
                "steps": counters.steps,
                "server_steps": counters.server_steps,
                "samples": counters.samples,
                "dropped": counters.dropped,
                "wall_s": round(time.perf_counter() - t0, 3),
                "clients": len(sampled),
                "failed_clients": counters.failed_clients,
                "train_s": round(train_s, 4),
                "messages": counters.messages,
                **{f"{k}_s": round(v, 4) for k, v in sorted(counters.seconds.items())},
                **dict(sorted(counters.bytes.items())),
            }
            stats = getattr(transport, "stats", None)  # the stream transport's counters
            if stats is not None:
                row.update(stats(rnd))
            self.rows.append(row)
            if self.keep_history:
                self.client_history.append([t.detach().clone() for t in self.client_half.state_dict().values()])
            if self.writer is not None:
                self.writer.write_round(row)
            if self.on_round is not None:
                self.on_round(row)
        return self.rows

    def _check_finite(self, rnd: int, counters: _RoundCounters) -> None:
        """Stop with a clear message once training has diverged (NaN/Inf weights)."""
        for name, half in (("client", self.client_half), ("server", self.server_half)):
            if not all(bool(torch.isfinite(t).all()) for t in half.state_dict().values()):
                loss = counters.loss_sum / counters.samples if counters.samples else float("nan")
                raise TrainingFailed(
                    f"training diverged in round {rnd}: the {name} half holds non-finite weights (train loss "
                    f"{loss:.4g}); lower optimizer.lr (now {self.config['optimizer']['lr']}) or use a gentler codec"
                )

    def _eval_batch(self) -> int:
        return int(self.config["eval_batch_size"]) or int(self.config["batch_size"])

    def _begin_fields(self, rnd: int) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "config": self._config_json,
            "round": rnd,
            WEIGHTS: encode_tensors(list(self.client_half.state_dict().values())),
        }
        if self.config["mode"] == "sequential" and self.client_momentum:
            fields[MOMENTUM] = self.client_momentum
        return fields

    def _run_wave(self, transport: Transport, nodes: list[int], rnd: int, counters: _RoundCounters) -> list[_Session]:
        """Run one round for ``nodes`` in parallel until each is done or failed."""
        sessions = {s.node: s for s in self._sessions(nodes)}
        begin = self._begin_fields(rnd)
        for node in nodes:
            self._send(transport, node, BEGIN, begin, rnd, counters)
        active = set(nodes)
        while active:
            t0 = time.perf_counter()
            try:
                replies = transport.receive()
            except TimeoutError as exc:
                log.error(
                    "round %d: no reply from clients %s (%s); they are dropped from this round",
                    rnd,
                    sorted(active),
                    exc,
                )
                for node in active:
                    sessions[node].failed = True
                    counters.failed_clients += 1
                    transport.release(node)
                break
            counters.add_time("transport", time.perf_counter() - t0)
            arrived: list[tuple[_Session, list[bytes], list[bytes]]] = []
            for reply in replies:
                if reply.node_id not in active or reply.round != rnd:
                    log.warning(
                        "round %d: ignoring a late reply from client %d (round %d)", rnd, reply.node_id, reply.round
                    )
                    continue
                counters.add("uplink", reply.nbytes)
                session = sessions[reply.node_id]
                batches = self._handle_reply(session, reply, rnd, counters)
                if batches is None:
                    active.discard(reply.node_id)
                    transport.release(reply.node_id)
                elif self.config["server_batching"]:
                    arrived.append((session, *batches))
                else:  # step and answer this client before the next one's batches
                    grads = [self._step([(session, a, y)], rnd, counters)[0] for a, y in zip(*batches, strict=True)]
                    self._send(transport, session.node, STEP, {GRADIENTS: grads}, rnd, counters)
            if arrived:
                for (session, _, _), grads in zip(arrived, self._step_together(arrived, rnd, counters), strict=True):
                    self._send(transport, session.node, STEP, {GRADIENTS: grads}, rnd, counters)
        return [s for s in sessions.values() if not s.failed]

    def _step_together(
        self, arrived: list[tuple[_Session, list[bytes], list[bytes]]], rnd: int, counters: _RoundCounters
    ) -> list[list[bytes]]:
        """Server batching: the j-th batches of all arrived clients make one server step, j = 1, 2, ..."""
        grads: list[list[bytes]] = [[] for _ in arrived]
        for j in range(max(len(acts) for _, acts, _ in arrived)):
            members = [i for i, (_, acts, _) in enumerate(arrived) if j < len(acts)]
            batch = [(arrived[i][0], arrived[i][1][j], arrived[i][2][j]) for i in members]
            for i, payload in zip(members, self._step(batch, rnd, counters), strict=True):
                grads[i].append(payload)
        return grads

    def _handle_reply(
        self, session: _Session, reply: Reply, rnd: int, counters: _RoundCounters
    ) -> tuple[list[bytes], list[bytes]] | None:
        """Read one reply: its (activation, label) payloads to step, or ``None`` when the client is
        finished (done or failed) for this round."""
        fields = reply.fields
        if fields is not None:
            counters.add_time("client", float(fields.get("t_client", 0.0)))
            counters.add_time("client_codec", float(fields.get("t_codec", 0.0)))
        if reply.error is not None or fields is None:
            self._leave(session, counters, rnd, f"failed: {reply.error}", str(reply.error))
            return None
        try:
            if fields.get("done"):
                like = list(self.client_half.state_dict().values())
                session.weights = decode_weights(list(fields[WEIGHTS]), like, f"client {session.node} weights")
                session.momentum = list(fields.get(MOMENTUM, []))
                session.samples = int(fields["samples"])
                return None
            acts, labels = list(fields[ACTIVATIONS]), list(fields[LABELS])
            if len(acts) != len(labels) or not acts:
                raise CodecError(f"{len(acts)} activation payloads with {len(labels)} label payloads")
        except (CodecError, KeyError, TypeError, ValueError) as exc:
            self._leave(session, counters, rnd, f"sent a malformed reply ({exc})", f"malformed reply: {exc}")
            return None
        return acts, labels

    @staticmethod
    def _leave(session: _Session, counters: _RoundCounters, rnd: int, why: str, error: str) -> None:
        """A client leaves the round (its half is not merged); its lost step counts as dropped."""
        log.error("round %d: client %d %s; it leaves this round", rnd, session.node, why)
        counters.errors.append(f"client {session.node}: {error}")
        session.failed = True
        counters.failed_clients += 1
        counters.dropped += 1

    def _send(
        self, transport: Transport, node: int, kind: str, fields: dict[str, Any], rnd: int, counters: _RoundCounters
    ) -> None:
        t0 = time.perf_counter()
        counters.add("downlink", transport.send(node, kind, fields, rnd))
        counters.add_time("transport", time.perf_counter() - t0)
        counters.messages += 1

    def _step(self, batch: list[tuple[_Session, bytes, bytes]], rnd: int, counters: _RoundCounters) -> list[bytes]:
        """One server step over ``(session, activations, labels)`` batches sharing a server half.

        Returns the gradient payload per batch: ``b""`` (the client skips the batch) for one whose
        payload does not decode.
        """
        session = batch[0][0]
        inputs = [
            StepInput(
                act,
                labels,
                self.uplink,
                self.downlink,
                self.num_classes,
                self.sample_shape,
                int(self.config["batch_size"]),
            )
            for _, act, labels in batch
        ]
        t0 = time.perf_counter()
        try:
            results = server_step_batched(session.server, session.optimizer, inputs, self.device)
        except ValueError as exc:  # NonFiniteLoss, or a gradient a codec refuses (NaN, |g| > 2**64)
            clients = ", ".join(str(s.node) for s, _, _ in batch)
            raise TrainingFailed(
                f"training diverged in round {rnd} on a batch of client {clients}: {exc}; lower optimizer.lr "
                f"(now {self.config['optimizer']['lr']}) or use a gentler codec"
            ) from exc
        elapsed = time.perf_counter() - t0
        payloads = []
        for (sess, _, _), out in zip(batch, results, strict=True):
            if not isinstance(out, ServerStep):
                log.error("round %d: dropped a step of client %d: %s", rnd, sess.node, out)
                counters.dropped += 1
                payloads.append(b"")
                continue
            counters.add_time("server_codec", out.codec_s)
            elapsed -= out.codec_s
            counters.loss_sum += out.loss * out.samples
            counters.samples += out.samples
            counters.steps += 1
            payloads.append(out.grad_payload)
        if any(isinstance(out, ServerStep) for out in results):  # something decoded: the half stepped
            counters.server_steps += 1
        counters.add_time("server_compute", elapsed)
        return payloads

    def _merge(self, finished: list[_Session]) -> None:
        """Hand on (sequential) or FedAvg (splitfed) the halves the clients returned."""
        done = [s for s in finished if s.weights is not None and s.samples > 0]
        if not done:
            log.warning("no client trained a sample this round: the halves stay as they were")
            return
        mode = self.config["mode"]
        if mode == "sequential":
            last = done[-1]
            fedavg_into(self.client_half, [last.weights or []], [1.0])
            self.client_momentum = last.momentum
            return
        weights = [float(s.samples) for s in done]
        fedavg_into(self.client_half, [s.weights or [] for s in done], weights)
        if mode == "splitfed1":
            fedavg_into(self.server_half, [list(s.server.state_dict().values()) for s in done], weights)
            for s in finished:
                self._server_momentum[s.node] = momentum_buffers(s.optimizer, s.server.parameters())


def server_device(name: str) -> torch.device:
    """The server half's device; ``ConfigError`` when this machine does not have it."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"server_device={name!r}, but torch.cuda.is_available() is False on this machine; "
                "use server_device=cpu (or run the server on a machine with a CUDA GPU)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"server_device={name!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def describe(config: dict[str, Any]) -> str:
    """One line naming the run (for logs and plot titles)."""
    keys = ("mode", "dataset", "clients", "uplink", "downlink", "cut", "batches_per_message")
    return json.dumps({k: config[k] for k in keys})
