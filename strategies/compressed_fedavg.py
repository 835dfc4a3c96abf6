"""Federated averaging of compressed updates, on Flower's Message-API ``FedAvg``.

Flower's ``FedAvg`` samples the nodes, builds the messages, checks the replies and averages them
weighted by ``num-examples``; this subclass only adds what compression needs around it:

- ``configure_train`` puts the uplink codec spec, error feedback and the run's config into the
  ``"config"`` record, and measures the downlink (the global weights' bytes, per message);
- ``aggregate_train`` decodes each reply's payloads (:func:`fl_split.fl.update.decode_update`) into
  the delta ``ArrayRecord`` Flower's ``FedAvg`` expects, lets ``FedAvg.aggregate_train`` average
  the deltas, and returns ``global + server_lr * mean delta`` as the next global model.

Every reply is checked before it is used (:mod:`fl_split.validate`): an error reply, a payload that
does not decode, a non-finite update, a missing, non-integer, zero or larger-than-the-training-set
``num-examples``, a non-finite ``train-loss`` or a bad byte count drops that client for the round,
logged and counted by reason; a sampled client that never replied (Flower's timeout) is counted as
failed (``timed_out``). Per round it keeps the measured counters :meth:`round_row` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl_split import validate
from fl_split.codecs import CodecError
from fl_split.config import ConfigError, config_digest
from fl_split.fl.client import build_model
from fl_split.fl.config import FLClientTask, FLConfig
from fl_split.fl.update import DOWN_RECORD, UPDATE_RECORD, decode_update, encode_update
from fl_split.sl.setup import load_split
from fl_split.validate import reason_of

log = logging.getLogger(__name__)


@dataclass
class RoundCounters:
    """What one round measured (bytes are payload ``len()`` sums)."""

    sampled_nodes: list[int] = field(default_factory=list)
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    replies: int = 0
    failed_clients: int = 0
    #: the largest accepted update, ``‖delta‖ / (‖global‖ + 1)`` (``max_update_norm``)
    update_size_max: float = 0.0
    dropped: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    residual_bytes: int = 0
    view_bytes: int = 0
    aggregated: int = 0
    errors: list[str] = field(default_factory=list)
    #: failed clients per reason (:data:`fl_split.validate.REASONS`)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def sampled(self) -> int:
        """Clients sampled this round."""
        return len(self.sampled_nodes)


def array_bytes(record: ArrayRecord) -> int:
    """Bytes of an ``ArrayRecord``'s arrays as they travel (each array's serialized ``data``)."""
    return sum(len(a.data) for a in record.values())


class CompressedFedAvg(FedAvg):
    """``FedAvg`` whose clients send codec-compressed model deltas (see the module docstring).

    Parameters
    ----------
    config:
        A resolved ``fl`` config (:func:`fl_split.fl.config.load_fl_config`).
    """

    def __init__(self, config: FLConfig) -> None:
        super().__init__(
            fraction_train=config.fraction,
            fraction_evaluate=0.0,  # the server evaluates the global model itself (evaluate_fn)
            min_train_nodes=1,
            min_evaluate_nodes=0,
            # FLRun.start waits (bounded) for `clients` nodes; after that a node that leaves must not
            # make Flower's sampling wait for it forever: sample from whoever is connected
            min_available_nodes=1,
        )
        self.config = config
        self._config_json = config_digest(FLClientTask.of(config))  # the clients get only their task
        self._global: dict[str, torch.Tensor] = {}
        self.counters = RoundCounters()
        #: a resumed run's rounds done before (Flower's loop counts from 1 again)
        self.round_offset = 0
        #: every client that left a round: ``{"round", "client", "reason", "error"}``
        self.failures: list[dict[str, Any]] = []
        #: a client's ``num-examples`` can be no more than the training set
        self.max_examples = len(load_split(config, "train")[1])
        #: last ``residual-bytes`` / ``view-bytes`` each node reported: client memory over all clients
        self.residual_by_node: dict[int, int] = {}
        self.view_by_node: dict[int, int] = {}
        #: downlink compression: the global model as the clients in sync hold it, and who holds which round
        self._view: dict[str, torch.Tensor] | None = None
        self._synced: dict[int, int] = {}
        if config.downlink != "none":
            model = build_model(config, seed=0).state_dict()
            if not all(t.is_floating_point() for t in model.values()):
                raise ConfigError(
                    f"downlink {config.downlink!r} needs a model whose state is all floating point "
                    "(BatchNorm's batch counters are not); use downlink=none with this model"
                )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's sampling and messages, with the codec settings in the config; downlink measured."""
        server_round += self.round_offset
        self._global = arrays.to_torch_state_dict()
        self.counters = RoundCounters()
        config["uplink"] = self.config.uplink
        config["downlink"] = self.config.downlink
        config["error-feedback"] = self.config.error_feedback
        config["dense-below"] = self.config.dense_below
        config["fl-config"] = self._config_json
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.counters.sampled_nodes = [msg.metadata.dst_node_id for msg in messages]
        if self.config.downlink == "none":
            self.counters.downlink_bytes = len(messages) * array_bytes(arrays)
        else:
            self._compress_downlink(server_round, messages, config)
        return messages

    def _compress_downlink(self, server_round: int, messages: list[Message], config: ConfigRecord) -> None:
        """Send the change of the global model to nodes that hold the last one; the full model to the others.

        The clients' copy (``view``) advances by the decoded change, so what the codec dropped stays in
        ``global - view`` and is sent in a later round (error feedback on the downlink for free).
        """
        spec, dense = self.config.downlink, self.config.dense_below
        down: ConfigRecord | None = None
        if self._view is None:
            self._view = {k: v.clone() for k, v in self._global.items()}
        else:
            change = {k: self._global[k] - self._view[k] for k in self._view}
            names, payloads, _ = encode_update(change, spec, dense_below=dense)
            decoded = decode_update(names, payloads, self._view, spec, dense_below=dense)
            self._view = {k: v + decoded[k] for k, v in self._view.items()}
            down = ConfigRecord({"names": names, "payloads": payloads, "base-round": server_round - 1})
            down_bytes = sum(len(p) for p in payloads)
        full = ArrayRecord(torch_state_dict=self._view)
        for msg in messages:
            node = msg.metadata.dst_node_id
            if down is not None and self._synced.get(node) == server_round - 1:
                msg.content = RecordDict({"config": config, DOWN_RECORD: down})
                self.counters.downlink_bytes += down_bytes
            else:
                msg.content = RecordDict({"arrays": full, "config": config})
                self.counters.downlink_bytes += array_bytes(full)
            self._synced[node] = server_round

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode every reply's update, let ``FedAvg`` average the deltas, step the global model."""
        server_round += self.round_offset
        c = self.counters
        decoded: list[tuple[int, int, Message, float]] = []  # (partition, node, reply, loss × examples)
        replied = set()
        for msg in replies:
            c.replies += 1
            node = msg.metadata.src_node_id
            replied.add(node)
            if msg.has_error():
                self._synced.pop(node, None)  # it may not hold this round's model: full model next time
                self._fail(server_round, node, "raised", str(msg.error.reason))
                continue
            try:
                delta, metrics, nbytes = self._decode(msg)
                examples = validate.count(
                    validate.field(metrics, "num-examples"), "num-examples", low=1, high=self.max_examples
                )
                loss = validate.number(metrics.get("train-loss", 0.0), "train-loss")
                residual = validate.count(metrics.get("residual-bytes", 0), "residual-bytes")
                view = validate.count(metrics.get("view-bytes", 0), "view-bytes")
                partition = validate.count(metrics.get("partition-id", 0), "partition-id")
                validate.finite(delta.values(), "the update")
                size = validate.bounded_change(
                    delta.values(), [self._global[k] for k in delta], self.config.max_update_norm, "its model"
                )
            except (CodecError, KeyError, TypeError, ValueError, OverflowError) as exc:
                self._synced.pop(node, None)
                c.dropped += 1
                self._fail(server_round, node, reason_of(exc), f"dropped its update: {exc}")
                continue
            c.uplink_bytes += nbytes
            c.update_size_max = max(c.update_size_max, size)
            c.samples += examples
            self.residual_by_node[node] = residual
            self.view_by_node[node] = view
            # only the checked values go on to Flower's FedAvg (extra or missing keys would make its
            # consistency check raise for the whole round)
            checked = MetricRecord(
                {"num-examples": examples, "train-loss": loss, "residual-bytes": residual, "view-bytes": view}
            )
            msg.content = RecordDict({"arrays": ArrayRecord(torch_state_dict=delta), "metrics": checked})
            decoded.append((partition, node, msg, loss * examples))
        for node in c.sampled_nodes:
            if node not in replied:
                self._fail(server_round, node, "timed_out", "sent no reply within flower.timeout_s")
        c.aggregated = len(decoded)
        c.residual_bytes = sum(self.residual_by_node.values())
        c.view_bytes = sum(self.view_by_node.values())
        if not decoded:
            log.error("round %d: no update decoded; the global model stays as it was", server_round)
            return None, None
        # FedAvg's float32 sums depend on their order: sum in partition order, not in arrival order, so
        # a run (and a resumed one) gives the same model bit for bit however the replies arrive
        decoded.sort(key=lambda item: item[:2])
        c.loss_sum += sum(item[3] for item in decoded)
        mean, agg_metrics = super().aggregate_train(server_round, [item[2] for item in decoded])
        if mean is None:
            return None, agg_metrics
        step = self.config.server_lr
        delta = mean.to_torch_state_dict()
        new = {k: (v + step * delta[k].to(v.dtype)) if k in delta else v for k, v in self._global.items()}
        return ArrayRecord(torch_state_dict=new), agg_metrics

    def state_dict(self) -> dict[str, Any]:
        """The server-side state a resumed run needs besides the global model: the downlink view, the
        clients' reported memory, the failure log (the clients' own state stays with them)."""
        return {
            "view": self._view,
            "residual_by_node": {str(k): v for k, v in self.residual_by_node.items()},
            "view_by_node": {str(k): v for k, v in self.view_by_node.items()},
            "failures": list(self.failures),
        }

    def load_state_dict(self, state: dict[str, Any], round_: int) -> None:
        """Continue after round ``round_``: no node is taken to hold the view (each gets the full model once)."""
        self._view = state["view"]
        self.residual_by_node = {int(k): int(v) for k, v in state["residual_by_node"].items()}
        self.view_by_node = {int(k): int(v) for k, v in state["view_by_node"].items()}
        self.failures = list(state["failures"])
        self._synced = {}
        self.round_offset = round_

    def _fail(self, server_round: int, node: int, reason: str, error: str) -> None:
        """Count a client that leaves the round (nothing of it is aggregated)."""
        c = self.counters
        c.failed_clients += 1
        c.reasons[reason] = c.reasons.get(reason, 0) + 1
        c.errors.append(f"client {node}: {error}")
        self.failures.append({"round": server_round, "client": node, "reason": reason, "error": error[:500]})
        log.error("round %d: client %d %s (%s); it leaves this round", server_round, node, error, reason)

    def _decode(self, msg: Message) -> tuple[dict[str, torch.Tensor], MetricRecord, int]:
        record = msg.content.config_records[UPDATE_RECORD]
        names, payloads = record["names"], record["payloads"]
        if not isinstance(names, list) or not isinstance(payloads, list):
            raise CodecError("the update record's names and payloads must be lists")
        like = {k: v for k, v in self._global.items() if v.is_floating_point()}
        delta = decode_update(
            [str(n) for n in names],
            [p if isinstance(p, bytes) else b"" for p in payloads],
            like,
            self.config.uplink,
            dense_below=self.config.dense_below,
        )
        return delta, msg.content.metric_records["metrics"], sum(len(p) for p in payloads if isinstance(p, bytes))

    def round_row(self) -> dict[str, Any]:
        """This round's measured counters as ``metrics.jsonl`` fields."""
        c = self.counters
        return {
            "clients": c.sampled,
            "uplink_bytes": c.uplink_bytes,
            "downlink_bytes": c.downlink_bytes,
            "train_loss": c.loss_sum / c.samples if c.samples else None,
            "samples": c.samples,
            "dropped": c.dropped,
            "failed_clients": c.failed_clients,
            "update_size_max": round(c.update_size_max, 6),
            "failure_reasons": dict(sorted(c.reasons.items())),
            "aggregated": c.aggregated,
            "residual_bytes": c.residual_bytes,
            "view_bytes": c.view_bytes,
        }
