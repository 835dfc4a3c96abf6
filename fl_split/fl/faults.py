"""Fault injection for the federated-learning ClientApp (Flower mods outside ``compress_update``).

They live in the library so Ray actors can import them by reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fl_split.fl.update import UPDATE_RECORD


def _hit(msg: Message, context: Context, partition_id: int, round_: int) -> bool:
    config = msg.content.config_records.get("config")
    return (
        msg.metadata.message_type == "train"
        and int(str(context.node_config.get("partition-id", -1))) == partition_id
        and config is not None
        and int(str(config.get("server-round", -1))) == round_
    )


@dataclass(frozen=True)
class CorruptUpdate:
    """Truncate the first payload of partition ``partition_id``'s compressed update in round ``round_``."""

    partition_id: int
    round_: int = 1

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if _hit(msg, context, self.partition_id, self.round_) and UPDATE_RECORD in reply.content.config_records:
            record = reply.content.config_records[UPDATE_RECORD]
            payloads = record["payloads"]
            if isinstance(payloads, list) and payloads and isinstance(payloads[0], bytes):
                record["payloads"] = [payloads[0][: len(payloads[0]) // 2], *payloads[1:]]
        return reply


@dataclass(frozen=True)
class RaiseInTrain:
    """Raise in partition ``partition_id``'s ClientApp in round ``round_``."""

    partition_id: int
    round_: int = 1

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if _hit(msg, context, self.partition_id, self.round_):
            raise RuntimeError(f"injected fault in partition {self.partition_id}")
        return call_next(msg, context)


@dataclass(frozen=True)
class TamperMetric:
    """Set metric ``key`` of partition ``partition_id``'s reply in round ``round_`` to ``value`` (a lying client)."""

    partition_id: int
    key: str
    value: float | int
    round_: int = 1

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if _hit(msg, context, self.partition_id, self.round_) and "metrics" in reply.content.metric_records:
            reply.content.metric_records["metrics"][self.key] = self.value
        return reply
