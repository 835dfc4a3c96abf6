"""Fault injection for split-learning ClientApps (Flower mods), to test that a run survives faults.

They live in the library, not in the tests, so Ray actors can import them by reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fl_split.sl.records import RECORD
from fl_split.sl.wire import ACTIVATIONS, WEIGHTS

#: a float32 NaN, little-endian (a codec refuses to encode one; a hostile client writes it by hand)
_NAN = b"\x00\x00\xc0\x7f"


@dataclass(frozen=True)
class CorruptUplink:
    """Truncate the first activation payload of partition ``partition_id``'s ``nth`` step reply in round ``round_``."""

    partition_id: int
    nth: int = 2
    round_: int = 1

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if _hit(msg, context, self, "corrupt") and reply.has_content():
            record = reply.content.config_records[RECORD]
            acts = record.get(ACTIVATIONS)
            if isinstance(acts, list) and acts and isinstance(acts[0], bytes):
                record[ACTIVATIONS] = [acts[0][: len(acts[0]) // 2], *acts[1:]]
        return reply


@dataclass(frozen=True)
class PoisonWeights:
    """Write a NaN into the client-half weights of partition ``partition_id``'s done reply in round ``round_``.

    With the ``stream`` transport the done reply is the Flower reply to ``sl_begin``: the same mod works.
    """

    partition_id: int
    round_: int = 1

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if (
            int(context.node_config.get("partition-id", -1)) == self.partition_id
            and msg.metadata.group_id == str(self.round_)
            and reply.has_content()
        ):
            record = reply.content.config_records[RECORD]
            weights = record.get(WEIGHTS)
            if record.get("done") is True and isinstance(weights, list) and weights and isinstance(weights[0], bytes):
                record[WEIGHTS] = [weights[0][:-4] + _NAN, *weights[1:]]
        return reply


@dataclass(frozen=True)
class RaiseOnStep:
    """Raise in partition ``partition_id``'s ClientApp on its ``nth`` ``sl_step`` message of round ``round_``.

    A ClientApp that raises does not persist ``context.state`` for that message.
    """

    partition_id: int
    nth: int = 2
    round_: int = 1

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if _hit(msg, context, self, "raise"):
            raise RuntimeError(f"injected fault in partition {self.partition_id}")
        return call_next(msg, context)


def _hit(msg: Message, context: Context, fault: CorruptUplink | RaiseOnStep, tag: str) -> bool:
    """Count the target node's ``sl_step`` messages of the fault's round; True on the ``nth``."""
    if (
        int(context.node_config.get("partition-id", -1)) != fault.partition_id
        or msg.metadata.message_type != "train.sl_step"
        or msg.metadata.group_id != str(fault.round_)
    ):
        return False
    key = f"fl_split.faults.{tag}"
    from flwr.app import ConfigRecord

    counter = context.state.config_records.get(key)
    seen = int(str(counter["n"])) + 1 if counter is not None else 1
    context.state[key] = ConfigRecord({"n": seen})
    return seen == fault.nth


@dataclass(frozen=True)
class BreakStream:
    """Drop partition ``partition_id``'s stream (a vanishing client) at its ``step``-th gradient of round ``round_``.

    Pass it as ``make_client_app(stream_fault=...)``; the ClientApp then raises for that ``sl_begin``.
    """

    partition_id: int
    step: int = 2
    round_: int = 1

    def __call__(self, partition_id: int, round_: int, step: int) -> bool:
        return (partition_id, round_, step) == (self.partition_id, self.round_, self.step)
