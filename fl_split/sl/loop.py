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

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fl_split import validate
from fl_split.checkpoint import MAY_CHANGE, save_checkpoint
from fl_split.codecs import Codec, CodecError, codec_from_spec
from fl_split.config import ConfigError, config_digest
from fl_split.data import dataset_info
from fl_split.errors import TrainingFailed
from fl_split.metrics import RunWriter
from fl_split.sl.client import BEGIN, STEP
from fl_split.sl.config import MASK, SLClientTask, SLConfig
from fl_split.sl.protocol import RoundProtocol, Session, SessionStatus, create_protocol, mergeable
from fl_split.sl.server import ServerStep, StepInput, evaluate, server_step_batched
from fl_split.sl.setup import batches_per_epoch, build_sl_halves, check_model_fits_data, load_split, make_sgd
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
from fl_split.validate import BadReply, reason_of

#: what reading a reply may raise besides :class:`BadReply` (all mean: the reply is unusable)
_READ_ERRORS = (CodecError, KeyError, TypeError, ValueError, OverflowError)

log = logging.getLogger(__name__)

__all__ = ["RoundCounters", "SplitLearningLoop", "TrainingFailed", "describe", "server_device"]


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
    #: the largest accepted change of a client half, ``‖w − w_global‖ / (‖w_global‖ + 1)`` (``max_update_norm``)
    update_size_max: float = 0.0
    errors: list[str] = field(default_factory=list)
    #: failed clients per reason (:data:`fl_split.validate.REASONS`)
    reasons: dict[str, int] = field(default_factory=dict)
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

    With a ``writer`` and ``checkpoint_every > 0``, the loop replaces ``checkpoint.pt`` in the
    writer's folder every ``checkpoint_every`` rounds and after the last (:meth:`state_dict`);
    :meth:`load_state_dict` resumes from one.
    """

    def __init__(
        self,
        config: SLConfig,
        writer: RunWriter | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        keep_history: bool = False,
    ) -> None:
        self.config = config
        self.writer = writer
        self.on_round = on_round
        self.keep_history = keep_history
        self.sample_shape = check_model_fits_data(config)
        self.num_classes = dataset_info(config.dataset).num_classes
        self.device = server_device(config.server_device)
        self.client_half, server_half = build_sl_halves(config, seed=config.seed)
        #: local-loss split learning: clients train on their auxiliary head; no gradient goes back
        self.local = config.gradients == "local"
        self.server_half = server_half.to(self.device)
        self.uplink: Codec = codec_from_spec(config.uplink)
        self.downlink: Codec | None = None if config.downlink == MASK else codec_from_spec(config.downlink)
        self.server_optimizer = make_sgd(self.server_half.parameters(), config)
        self.x_test, self.y_test = load_split(config, "test")
        self.rng = random.Random(config.seed)
        self.protocol: RoundProtocol = create_protocol(
            config.mode,
            self.client_half,
            self.server_half,
            self.server_optimizer,
            lambda module: make_sgd(module.parameters(), config),
            self.rng,
        )
        self.rows: list[dict[str, Any]] = []
        #: every client that left a round: ``{"round", "client", "reason", "error"}``
        self.failures: list[dict[str, Any]] = []
        self.client_history: list[list[torch.Tensor]] = []
        self.server_history: list[list[torch.Tensor]] = []
        #: node id → the partition id its done replies reported
        self.partitions: dict[int, int] = {}
        # what the clients get: only the keys they train with (SLClientTask), and the run's identity: a hash of
        # the config without the keys a resumed run may change. A client restarts its data cursor when either
        # changes (another run on the same nodes), and a resumed run's clients go on where they were.
        self._config_json = config_digest(SLClientTask.of(config))
        run_keys = config_digest({k: v for k, v in config.items() if k not in MAY_CHANGE})
        self._run_id = hashlib.sha256(run_keys.encode()).hexdigest()[:16]
        #: resuming: the first round to train, totals so far, and the clients' state to restore
        self.first_round = 1
        self._cum = [0, 0]
        self._wall = 0.0
        self._transport_state: dict[str, Any] | None = None
        #: most batches a client may send in a round: what a client holding the whole training set
        #: would plan (``local_epochs`` passes, capped by ``max_steps_per_round``); local loss: every h-th of them
        self.max_batches = local_epochs_batches(config, len(load_split(config, "train")[1]))
        if self.local:
            self.max_batches = -(-self.max_batches // config.send_every)

    # ------------------------------------------------------------------ helpers
    def sample(self, nodes: list[int]) -> list[int]:
        """The clients of one round: ``max(1, round(fraction · n))`` drawn without replacement, ascending."""
        nodes = sorted(nodes)
        k = max(1, round(self.config.fraction * len(nodes)))
        return sorted(self.rng.sample(nodes, k)) if k < len(nodes) else nodes

    def begin_fields(self, rnd: int) -> dict[str, Any]:
        """The fields of the next wave's ``sl_begin``: the config, the round and what the protocol hands out."""
        return {"config": self._config_json, "run": self._run_id, "round": rnd, **self.protocol.begin()}

    # ------------------------------------------------------------------ the loop
    def start(self, transport: Transport) -> list[dict[str, Any]]:
        """Run every round over ``transport``; return the per-round metrics rows."""
        t0 = time.perf_counter() - self._wall
        cum_up, cum_down = self._cum
        if self._transport_state is not None:
            load = getattr(transport, "load_state_dict", None)
            if load is None:
                log.warning(
                    "resuming over %s: the clients' own state (data cursor) is not in the checkpoint's reach; "
                    "each client starts its data order afresh",
                    type(transport).__name__,
                )
            else:
                load(self._transport_state)
        nodes = transport.node_ids()
        if not nodes:
            raise RuntimeError("no clients are connected: nothing to train")
        if len(nodes) != self.config.clients:
            log.warning(
                "%d nodes are connected but the config says clients=%d: training on the %d nodes",
                len(nodes),
                self.config.clients,
                len(nodes),
            )
        for rnd in range(self.first_round, self.config.rounds + 1):
            counters = RoundCounters()
            sampled = self.sample(nodes)
            sessions: list[Session] = []
            t_train = time.perf_counter()
            limit = self.config.round_timeout_s
            deadline = time.monotonic() + limit if limit > 0 else None
            for wave in self.protocol.waves(sampled):
                ended = self.run_wave(transport, wave, rnd, counters, deadline)
                self.protocol.end_wave(ended)
                sessions += ended
            train_s = time.perf_counter() - t_train
            if not any(s.status is SessionStatus.DONE for s in sessions):
                raise TrainingFailed(self._no_client_finished(rnd, counters))
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
                "update_size_max": round(counters.update_size_max, 6),
                "failure_reasons": dict(sorted(counters.reasons.items())),
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
            stop = 0 < self.config.stop_at_accuracy <= acc
            if stop:
                log.info("round %d: test accuracy %.4f reached stop_at_accuracy: the run ends here", rnd, acc)
            if self.writer is not None:
                self.writer.write_round(row)
                every = self.config.checkpoint_every
                if every and (rnd % every == 0 or rnd == self.config.rounds or stop):
                    self._cum, self._wall = [cum_up, cum_down], time.perf_counter() - t0
                    save_checkpoint(self.writer.out_dir, "sl", rnd, self.config, self.state_dict(transport))
            if self.on_round is not None:
                self.on_round(row)
            if stop:
                break
        return self.rows

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, transport: Transport | None = None) -> dict[str, Any]:
        """What resuming needs: both halves, the server optimizer, the protocol's hand-on state, the
        sampling generator, torch's RNG, byte totals and wall time, and (in process) the clients' state."""
        clients = getattr(transport, "state_dict", None)
        return {
            "client_half": self.client_half.state_dict(),
            "server_half": {k: v.cpu() for k, v in self.server_half.state_dict().items()},
            "server_optimizer": self.server_optimizer.state_dict(),
            "protocol": self.protocol.state_dict(),
            "rng": list(self.rng.getstate()),
            "torch_rng": torch.get_rng_state(),
            "cum_bytes": list(self._cum),
            "wall_s": self._wall,
            "round": self.rows[-1]["round"] if self.rows else self.first_round - 1,
            "clients": clients() if clients is not None else None,
            "failures": list(self.failures),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the round ``state`` was saved at (see :meth:`state_dict`)."""
        self.client_half.load_state_dict(state["client_half"])
        self.server_half.load_state_dict(state["server_half"])
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        self.protocol.load_state_dict(state["protocol"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(state["torch_rng"])
        self._cum, self._wall = [int(n) for n in state["cum_bytes"]], float(state["wall_s"])
        self.first_round = int(state["round"]) + 1
        self._transport_state = state["clients"]
        self.failures = list(state["failures"])

    def _no_client_finished(self, rnd: int, counters: RoundCounters) -> str:
        """Why a round ended with no valid client (the run's error)."""
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(counters.reasons.items()))
        message = (
            f"round {rnd}: no client finished ({counters.failed_clients} failed: {reasons or 'none reported'}); "
            f"first error: {counters.errors[0] if counters.errors else 'none reported'}"
        )
        if counters.reasons and set(counters.reasons) == {"non_finite"}:
            message += (
                f"; every client's values went non-finite, so training has probably diverged: lower optimizer.lr "
                f"(now {self.config.optimizer['lr']}) or use a gentler codec"
            )
        return message

    def _check_finite(self, rnd: int, counters: RoundCounters) -> None:
        """Stop with a clear message once training has diverged (NaN/Inf weights)."""
        for name, half in (("client", self.client_half), ("server", self.server_half)):
            if not all(bool(torch.isfinite(t).all()) for t in half.state_dict().values()):
                loss = counters.loss_sum / counters.samples if counters.samples else float("nan")
                raise TrainingFailed(
                    f"training diverged in round {rnd}: the {name} half holds non-finite weights (train loss "
                    f"{loss:.4g}); lower optimizer.lr (now {self.config.optimizer['lr']}) or use a gentler codec"
                )

    def _eval_batch(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def run_wave(
        self,
        transport: Transport,
        nodes: list[int],
        rnd: int,
        counters: RoundCounters,
        deadline: float | None = None,
    ) -> list[Session]:
        """Run one wave: ``sl_begin`` to every node, then steps until each session is done or failed.

        ``deadline`` (``time.monotonic()`` seconds) ends the wave: clients still active then leave
        the round (reason ``round_deadline``); a wave that starts after it sends nothing.
        """
        sessions = {n: self.protocol.session(n) for n in nodes}
        if deadline is not None and time.monotonic() >= deadline:
            for node in nodes:
                why = "the round's deadline passed before its turn"
                self._leave(sessions[node], counters, rnd, "round_deadline", why, dropped=False)
            return list(sessions.values())
        begin = self.begin_fields(rnd)
        for node in nodes:
            self._send(transport, node, BEGIN, begin, rnd, counters)
        while any(s.active for s in sessions.values()):
            t0 = time.perf_counter()
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"round_timeout_s={self.config.round_timeout_s} passed")
                replies = transport.receive(remaining)
            except TimeoutError as exc:
                pending = sorted(n for n, s in sessions.items() if s.active)
                late = deadline is not None and time.monotonic() >= deadline
                log.error("round %d: no reply from clients %s (%s); they leave this round", rnd, pending, exc)
                for node in pending:
                    reason = "round_deadline" if late else "timed_out"
                    self._leave(sessions[node], counters, rnd, reason, f"timed out: {exc}", dropped=False)
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
                elif self.config.server_batching:
                    arrived.append((session, *batches))
                else:  # step and answer this client before the next one's batches
                    grads: list[bytes] = []
                    for a, y in zip(*batches, strict=True):
                        (g,) = self._step([(session, a, y)], rnd, counters)
                        if g is None:  # the client left the round
                            break
                        grads.append(g)
                    self._answer(transport, session, grads, rnd, counters)
            if arrived:
                for (session, _, _), grads in zip(arrived, self._step_together(arrived, rnd, counters), strict=True):
                    self._answer(transport, session, grads, rnd, counters)
        return list(sessions.values())

    def _answer(
        self, transport: Transport, session: Session, grads: list[bytes], rnd: int, counters: RoundCounters
    ) -> None:
        """Send a session its gradients, or release it if it left the round while they were computed."""
        if session.active:  # local-loss SL: an acknowledgement, no gradient
            self._send(transport, session.node, STEP, {GRADIENTS: [] if self.local else grads}, rnd, counters)
        else:
            transport.release(session.node)

    def _step_together(
        self, arrived: list[tuple[Session, list[bytes], list[bytes]]], rnd: int, counters: RoundCounters
    ) -> list[list[bytes]]:
        """Server batching: the j-th batches of all arrived clients make one server step, j = 1, 2, ..."""
        grads: list[list[bytes]] = [[] for _ in arrived]
        for j in range(max(len(acts) for _, acts, _ in arrived)):
            members = [i for i, (s, acts, _) in enumerate(arrived) if j < len(acts) and s.active]
            if not members:
                break
            batch = [(arrived[i][0], arrived[i][1][j], arrived[i][2][j]) for i in members]
            for i, payload in zip(members, self._step(batch, rnd, counters), strict=True):
                if payload is not None:
                    grads[i].append(payload)
        return grads

    def _handle_reply(
        self, session: Session, reply: Reply, rnd: int, counters: RoundCounters
    ) -> tuple[list[bytes], list[bytes]] | None:
        """Check one reply: its (activation, label) payloads to step, or ``None`` when the session has ended
        (the client is done, or failed: anything malformed, non-finite or out of range makes it leave)."""
        fields = reply.fields
        if reply.error is not None or fields is None:
            self._leave(session, counters, rnd, "raised", str(reply.error))
            return None
        try:
            t_client = validate.seconds(fields.get("t_client", 0.0), "t_client")
            t_codec = validate.seconds(fields.get("t_codec", 0.0), "t_codec")
            counters.add_time("client", t_client)
            counters.add_time("client_codec", t_codec)
            done = fields.get("done", False)
            if not isinstance(done, bool):
                raise BadReply("malformed", f"'done' must be true or false, got {done!r:.40}")
            if done:
                counters.update_size_max = max(counters.update_size_max, self._finish(session, fields))
                return None
            k = self.config.batches_per_message
            acts = validate.payloads(validate.field(fields, ACTIVATIONS), "activation payloads", low=1, high=k)
            labels = validate.payloads(validate.field(fields, LABELS), "label payloads", low=len(acts), high=len(acts))
            if session.batches + len(acts) > self.max_batches:
                raise BadReply(
                    "out_of_range",
                    f"sent {session.batches + len(acts)} batches this round; no client plans more than "
                    f"{self.max_batches} (local_epochs over the whole training set, max_steps_per_round)",
                )
            session.batches += len(acts)
        except _READ_ERRORS as exc:
            self._leave(session, counters, rnd, reason_of(exc), f"sent a bad reply ({exc})")
            return None
        return acts, labels

    def _finish(self, session: Session, fields: dict[str, Any]) -> float:
        """A done reply: check it against what the begin asked for and what the server counted, then DONE;
        the relative size of the client's change (:func:`fl_split.validate.bounded_change`).

        Raises ``BadReply`` (or another of ``_READ_ERRORS``) when anything is malformed, non-finite, or
        disagrees with the server's counts: the FedAvg weight is the server's count of samples it
        stepped for this client, so a client cannot inflate its say.
        """
        samples = validate.count(validate.field(fields, "samples"), "samples")
        steps = validate.count(validate.field(fields, "steps"), "steps")
        validate.count(fields.get("skipped", 0), "skipped", high=session.batches)
        if self.local:
            _check_local_counts(samples, steps, session, self.config)
        elif (samples, steps) != (session.trained, session.steps):
            raise BadReply(
                "out_of_range",
                f"reports {samples} samples in {steps} steps; the server stepped {session.trained} samples in "
                f"{session.steps} steps for it",
            )
        like = list(self.client_half.state_dict().values())
        weights = decode_weights(validate.payloads(validate.field(fields, WEIGHTS), "weights"), like, "weights")
        validate.finite(weights, "client-half weights")
        size = validate.bounded_change(
            [w - g for w, g in zip(weights, like, strict=True)], like, self.config.max_update_norm, "its half"
        )
        momentum: list[bytes] = []
        if MOMENTUM in self.protocol.returns:
            momentum = validate.payloads(validate.field(fields, MOMENTUM), "momentum payloads")
            params = list(self.client_half.parameters())
            validate.finite(decode_tensors(momentum, params, "momentum", allow_missing=True), "momentum")
        if PARTITION in fields:
            self.partitions[session.node] = validate.count(fields[PARTITION], "partition")
        session.finish(weights, momentum, session.trained)
        return size

    def _leave(
        self, session: Session, counters: RoundCounters, rnd: int, reason: str, error: str, *, dropped: bool = True
    ) -> None:
        """A client leaves the round (its half is not merged); with ``dropped``, its lost step counts as dropped."""
        log.error("round %d: client %d %s (%s); it leaves this round", rnd, session.node, error, reason)
        counters.errors.append(f"client {session.node}: {error}")
        counters.reasons[reason] = counters.reasons.get(reason, 0) + 1
        self.failures.append({"round": rnd, "client": session.node, "reason": reason, "error": error[:500]})
        session.fail(error, reason)
        counters.failed_clients += 1
        counters.dropped += int(dropped)

    def _send(
        self, transport: Transport, node: int, kind: str, fields: dict[str, Any], rnd: int, counters: RoundCounters
    ) -> None:
        t0 = time.perf_counter()
        counters.add("downlink", transport.send(node, kind, fields, rnd))
        counters.add_time("transport", time.perf_counter() - t0)
        counters.messages += 1

    def _step(self, batch: list[Batch], rnd: int, counters: RoundCounters) -> list[bytes | None]:
        """One server step over ``(session, activations, labels)`` batches sharing a server half.

        Returns the gradient payload per batch, ``None`` for one that could not be used (its payload
        does not decode, holds NaN/Inf, or gave a non-finite loss): that client leaves the round.
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
                self.config.batch_size,
                send_gradient=not self.local,
            )
            for _, act, labels in batch
        ]
        t0 = time.perf_counter()
        try:
            results = server_step_batched(session.server, session.optimizer, inputs, self.device)
        except ValueError as exc:  # the server half diverged, or a gradient a codec refuses (NaN, |g| > 2**64)
            clients = ", ".join(str(s.node) for s, _, _ in batch)
            raise TrainingFailed(
                f"training diverged in round {rnd} on a batch of client {clients}: {exc}; lower optimizer.lr "
                f"(now {self.config.optimizer['lr']}) or use a gentler codec"
            ) from exc
        elapsed = time.perf_counter() - t0
        payloads: list[bytes | None] = []
        for (sess, _, _), out in zip(batch, results, strict=True):
            if not isinstance(out, ServerStep):
                self._leave(sess, counters, rnd, reason_of(out), f"sent a batch the server cannot use ({out})")
                payloads.append(None)
                continue
            counters.add_time("server_codec", out.codec_s)
            elapsed -= out.codec_s
            counters.loss_sum += out.loss * out.samples
            counters.samples += out.samples
            counters.steps += 1
            sess.steps += 1
            sess.trained += out.samples
            payloads.append(out.grad_payload)
        if any(isinstance(out, ServerStep) for out in results):  # something decoded: the half stepped
            counters.server_steps += 1
        counters.add_time("server_compute", elapsed)
        return payloads


def _check_local_counts(samples: int, steps: int, session: Session, config: SLConfig) -> None:
    """A local-loss client's done counts against what the server saw: it trained ``steps`` batches and
    sent every ``send_every``-th, so ``ceil(steps / send_every)`` of them; it trained the samples the
    server received and at most ``batch_size`` more per batch it did not send, and each batch holds at
    least one. (The FedAvg weight is the server's own count, so this is a consistency check.)

    Raises
    ------
    BadReply
        When the counts cannot be those of the batches the server received (``out_of_range``).
    """
    h, unsent = config.send_every, steps - session.steps
    if (
        -(-steps // h) != session.steps
        or not max(steps, session.trained) <= samples <= session.trained + unsent * config.batch_size
    ):
        raise BadReply(
            "out_of_range",
            f"reports {samples} samples in {steps} local steps; sending every {h}-th batch, that is not the "
            f"{session.steps} batches ({session.trained} samples) the server received from it",
        )


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


def local_epochs_batches(config: SLConfig, samples: int) -> int:
    """Batches a client holding ``samples`` plans per round: ``local_epochs`` passes, capped by
    ``max_steps_per_round``."""
    planned = batches_per_epoch(samples, config.batch_size) * config.local_epochs
    cap = config.max_steps_per_round
    return min(planned, cap) if cap else planned


def describe(config: SLConfig) -> str:
    """One short line naming the run (for logs and plot titles), e.g.
    ``SL splitfed2, digits, 10 clients, cut 2: up ms:keep=0.05,bits=2, down none``."""
    per_message = f", {config.batches_per_message} batches/message" if config.batches_per_message > 1 else ""
    down = f"down {config.downlink}"
    if config.gradients == "local":
        every = f" every {config.send_every}" if config.send_every > 1 else ""
        down = f"local loss ({config.aux_head} head), no gradient down{every and ', activations' + every}"
    return (
        f"SL {config.mode}, {config.dataset}, {config.clients} clients, cut {config.cut}{per_message}: "
        f"up {config.uplink}, {down}"
    )
