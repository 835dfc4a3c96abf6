"""The split-learning server loop: rounds of waves of sessions, over any :class:`Transport`.

:class:`SplitLearningLoop` owns the server half, its optimizer, the global client half and the
round loop; what differs between modes is delegated to a
:class:`~fl_split.sl.protocol.RoundProtocol` (the waves, what ``sl_begin`` hands out, which server
half a session trains, how results merge). The step maths lives in :mod:`fl_split.sl.server` and
:mod:`fl_split.sl.client`; the bytes move through a transport (:mod:`fl_split.sl.transport`).

One round::

    sampled = sample(nodes)                      # seeded; fraction of the nodes
    for wave in protocol.waves(sampled):         # sequential: one node per wave, in a drawn order
        send sl_begin(config, round, protocol.begin()) to every node of the wave
        until every session of the wave is DONE or FAILED:
            receive replies -> server steps -> send gradients (sl_step)
        protocol.end_wave(sessions)              # sequential: hand the returned half on
    protocol.end_round(sessions)                 # splitfed: FedAvg by samples
    evaluate, write the metrics row

The server half lives on ``server_device`` (``cpu``, ``cuda``, ``cuda:N``): payloads are decoded
there and gradients encoded from there; the global client half stays on the CPU.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fl_split.codecs import Codec, CodecError, codec_from_spec
from fl_split.config import ConfigError, config_digest
from fl_split.data import dataset_info
from fl_split.metrics import RunWriter
from fl_split.sl.client import BEGIN, STEP
from fl_split.sl.config import MASK
from fl_split.sl.protocol import RoundProtocol, Session, SessionStatus, create_protocol, mergeable
from fl_split.sl.server import ServerStep, StepInput, evaluate, server_step_batched
from fl_split.sl.setup import build_halves, check_model_fits_data, load_split, make_sgd
from fl_split.sl.transport import Reply, Transport
from fl_split.sl.wire import (
    ACTIVATIONS,
    GRADIENTS,
    LABELS,
    MOMENTUM,
    PARTITION,
    WEIGHTS,
    decode_tensors,
    decode_weights,
)

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """The run cannot go on: the weights went non-finite, or every client of a round failed."""


@dataclass
class RoundCounters:
    """What one round measured: bytes per direction and category, losses, steps, faults, seconds."""

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
        """Add ``seconds`` to the ``key`` time."""
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def add(self, direction: str, nbytes: dict[str, int]) -> None:
        """Add measured bytes per category (``uplink``/``downlink``)."""
        for cat, n in nbytes.items():
            key = f"{direction}_{cat}_bytes"
            self.bytes[key] = self.bytes.get(key, 0) + n

    def total(self, direction: str) -> int:
        """All bytes of one direction."""
        return sum(n for k, n in self.bytes.items() if k.startswith(direction + "_"))


#: ``(session, activation payload, label payload)``: one batch for the server
Batch = tuple[Session, bytes, bytes]


class SplitLearningLoop:
    """The split-learning round loop over any transport (see the module docstring).

    Parameters
    ----------
    config:
        A resolved split-learning config (:func:`fl_split.sl.config.load_sl_config`).
    writer:
        Where per-round metrics go (``None``: keep them in :attr:`rows` only).
    on_round:
        Called with each round's metrics row (progress display).
    keep_history:
        Keep a copy of both halves after every round in :attr:`client_history` and
        :attr:`server_history` (tests compare engines with them).
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
        self.x_test, self.y_test = load_split(config, "test")
        self.rng = random.Random(int(config["seed"]))
        self.protocol: RoundProtocol = create_protocol(
            str(config["mode"]),
            self.client_half,
            self.server_half,
            self.server_optimizer,
            lambda module: make_sgd(module.parameters(), config),
            self.rng,
        )
        self.rows: list[dict[str, Any]] = []
        self.client_history: list[list[torch.Tensor]] = []
        self.server_history: list[list[torch.Tensor]] = []
        #: node id → the partition id its done replies reported
        self.partitions: dict[int, int] = {}
        self._config_json = config_digest(config)

    # ------------------------------------------------------------------ helpers
    def sample(self, nodes: list[int]) -> list[int]:
        """The clients of one round: ``max(1, round(fraction · n))`` drawn without replacement, ascending."""
        nodes = sorted(nodes)
        k = max(1, round(float(self.config["fraction"]) * len(nodes)))
        return sorted(self.rng.sample(nodes, k)) if k < len(nodes) else nodes

    def begin_fields(self, rnd: int) -> dict[str, Any]:
        """The fields of the next wave's ``sl_begin``: the config, the round and what the protocol hands out."""
        return {"config": self._config_json, "round": rnd, **self.protocol.begin()}

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
            counters = RoundCounters()
            sampled = self.sample(nodes)
            sessions: list[Session] = []
            t_train = time.perf_counter()
            for wave in self.protocol.waves(sampled):
                ended = self.run_wave(transport, wave, rnd, counters)
                self.protocol.end_wave(ended)
                sessions += ended
            train_s = time.perf_counter() - t_train
            if not any(s.status is SessionStatus.DONE for s in sessions):
                raise TrainingFailed(
                    f"round {rnd}: no client finished ({counters.failed_clients} failed); first error: "
                    f"{counters.errors[0] if counters.errors else 'none reported'}"
                )
            if not mergeable(sessions):
                log.warning("round %d: no client trained a sample: the halves stay as they were", rnd)
            self.protocol.end_round(sessions)
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
                **transport.stats(rnd),
            }
            self.rows.append(row)
            if self.keep_history:
                self.client_history.append([t.detach().clone() for t in self.client_half.state_dict().values()])
                self.server_history.append([t.detach().cpu().clone() for t in self.server_half.state_dict().values()])
            if self.writer is not None:
                self.writer.write_round(row)
            if self.on_round is not None:
                self.on_round(row)
        return self.rows

    def _check_finite(self, rnd: int, counters: RoundCounters) -> None:
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

    def run_wave(self, transport: Transport, nodes: list[int], rnd: int, counters: RoundCounters) -> list[Session]:
        """Run one wave: ``sl_begin`` to every node, then steps until each session is done or failed."""
        sessions = {n: self.protocol.session(n) for n in nodes}
        begin = self.begin_fields(rnd)
        for node in nodes:
            self._send(transport, node, BEGIN, begin, rnd, counters)
        while any(s.active for s in sessions.values()):
            t0 = time.perf_counter()
            try:
                replies = transport.receive()
            except TimeoutError as exc:
                pending = sorted(n for n, s in sessions.items() if s.active)
                log.error("round %d: no reply from clients %s (%s); they leave this round", rnd, pending, exc)
                for node in pending:
                    sessions[node].fail(f"timed out: {exc}")
                    counters.errors.append(f"client {node}: timed out")
                    counters.failed_clients += 1
                    transport.release(node)
                break
            counters.add_time("transport", time.perf_counter() - t0)
            arrived: list[tuple[Session, list[bytes], list[bytes]]] = []
            for reply in replies:
                session = sessions.get(reply.node_id)
                if session is None or not session.active or reply.round != rnd:
                    log.warning(
                        "round %d: ignoring a late reply from client %d (round %d)", rnd, reply.node_id, reply.round
                    )
                    continue
                counters.add("uplink", reply.nbytes)
                batches = self._handle_reply(session, reply, rnd, counters)
                if batches is None:
                    transport.release(reply.node_id)
                elif self.config["server_batching"]:
                    arrived.append((session, *batches))
                else:  # step and answer this client before the next one's batches
                    grads = [self._step([(session, a, y)], rnd, counters)[0] for a, y in zip(*batches, strict=True)]
                    self._send(transport, session.node, STEP, {GRADIENTS: grads}, rnd, counters)
            if arrived:
                for (session, _, _), grads in zip(arrived, self._step_together(arrived, rnd, counters), strict=True):
                    self._send(transport, session.node, STEP, {GRADIENTS: grads}, rnd, counters)
        return list(sessions.values())

    def _step_together(
        self, arrived: list[tuple[Session, list[bytes], list[bytes]]], rnd: int, counters: RoundCounters
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
        self, session: Session, reply: Reply, rnd: int, counters: RoundCounters
    ) -> tuple[list[bytes], list[bytes]] | None:
        """Read one reply: its (activation, label) payloads to step, or ``None`` when the session has ended
        (the client is done, or failed)."""
        fields = reply.fields
        if fields is not None:
            counters.add_time("client", float(fields.get("t_client", 0.0)))
            counters.add_time("client_codec", float(fields.get("t_codec", 0.0)))
        if reply.error is not None or fields is None:
            self._leave(session, counters, rnd, f"failed: {reply.error}", str(reply.error))
            return None
        try:
            if fields.get("done"):
                self._finish(session, fields)
                return None
            acts, labels = list(fields[ACTIVATIONS]), list(fields[LABELS])
            if len(acts) != len(labels) or not acts:
                raise CodecError(f"{len(acts)} activation payloads with {len(labels)} label payloads")
        except (CodecError, KeyError, TypeError, ValueError) as exc:
            self._leave(session, counters, rnd, f"sent a malformed reply ({exc})", f"malformed reply: {exc}")
            return None
        return acts, labels

    def _finish(self, session: Session, fields: dict[str, Any]) -> None:
        """A done reply: check what the begin asked for, then DONE (``CodecError``/``KeyError`` when malformed)."""
        weights = decode_weights(list(fields[WEIGHTS]), list(self.client_half.state_dict().values()), "weights")
        momentum: list[bytes] = []
        if MOMENTUM in self.protocol.returns:
            momentum = list(fields[MOMENTUM])
            decode_tensors(momentum, list(self.client_half.parameters()), "momentum", allow_missing=True)
        if PARTITION in fields:
            self.partitions[session.node] = int(fields[PARTITION])
        session.finish(weights, momentum, int(fields["samples"]))

    @staticmethod
    def _leave(session: Session, counters: RoundCounters, rnd: int, why: str, error: str) -> None:
        """A client leaves the round (its half is not merged); its lost step counts as dropped."""
        log.error("round %d: client %d %s; it leaves this round", rnd, session.node, why)
        counters.errors.append(f"client {session.node}: {error}")
        session.fail(error)
        counters.failed_clients += 1
        counters.dropped += 1

    def _send(
        self, transport: Transport, node: int, kind: str, fields: dict[str, Any], rnd: int, counters: RoundCounters
    ) -> None:
        t0 = time.perf_counter()
        counters.add("downlink", transport.send(node, kind, fields, rnd))
        counters.add_time("transport", time.perf_counter() - t0)
        counters.messages += 1

    def _step(self, batch: list[Batch], rnd: int, counters: RoundCounters) -> list[bytes]:
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
