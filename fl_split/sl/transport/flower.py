"""The split-learning transport over Flower messages (``grid.push_messages`` / ``pull_messages``).

Replies are polled every ``poll_ms`` milliseconds, never with ``send_and_receive`` (which would
block on one round trip at a time). Bytes are measured where fields enter a message.
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fl_split.sl.config import SLConfig
from fl_split.sl.records import from_record, to_record
from fl_split.sl.transport.base import Reply
from fl_split.sl.wire import field_nbytes


class FlowerTransport:
    """Send split-learning messages as ``train.<kind>`` Flower messages and collect replies.

    Parameters
    ----------
    grid:
        The ServerApp's grid.
    poll_ms:
        Wait between ``pull_messages`` calls while nothing has arrived, in milliseconds.
    timeout_s:
        :meth:`receive` raises ``TimeoutError`` after this many seconds without any reply.
    """

    def __init__(self, grid: Grid, poll_ms: float = 1.0, timeout_s: float = 600.0) -> None:
        self.grid = grid
        self.poll_s = poll_ms / 1000.0
        self.timeout_s = timeout_s
        self._pending: dict[str, int] = {}  # message id -> destination node

    @classmethod
    def from_config(cls, grid: Grid, config: SLConfig) -> FlowerTransport:
        """The transport a split-learning config's ``flower.poll_ms`` / ``flower.timeout_s`` ask for."""
        return cls(grid, poll_ms=config.flower.poll_ms, timeout_s=config.flower.timeout_s)

    def node_ids(self) -> list[int]:
        """The connected SuperNodes (virtual nodes in simulation), waiting up to ``timeout_s`` for one."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if nodes or time.monotonic() > deadline:
                return nodes
            time.sleep(0.2)

    def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
        """Push one ``train.<kind>`` message; return its measured bytes per category."""
        nbytes = field_nbytes(fields)
        message = Message(
            content=to_record(fields), dst_node_id=node_id, message_type=f"train.{kind}", group_id=str(round_)
        )
        for mid in self.grid.push_messages([message]):
            self._pending[mid] = node_id
        return nbytes

    def release(self, node_id: int) -> None:
        """Nothing to release: a message holds no connection (a late reply is ignored by its round)."""

    def stats(self, round_: int) -> dict[str, Any]:
        """No counters of its own (Flower's messages are counted by the loop)."""
        return {}

    @property
    def pending(self) -> int:
        """Messages sent and not yet answered."""
        return len(self._pending)

    def poll(self) -> list[Reply]:
        """The replies that have arrived (one ``pull_messages``; possibly none)."""
        replies = []
        for msg in self.grid.pull_messages(list(self._pending)):
            node = self._pending.pop(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            rnd = int(msg.metadata.group_id) if msg.metadata.group_id.isdigit() else 0
            if msg.has_error():
                replies.append(Reply(node, None, f"{msg.error.code}: {msg.error.reason}", round=rnd))
                continue
            fields = from_record(msg.content)
            replies.append(Reply(node, fields, None, field_nbytes(fields), rnd))
        return replies

    def receive(self, timeout_s: float | None = None) -> list[Reply]:
        """Poll until at least one reply arrives (each becomes a :class:`Reply`), for at most
        ``min(self.timeout_s, timeout_s)`` seconds."""
        if not self._pending:
            raise TimeoutError("no message is awaiting a reply")
        limit = self.timeout_s if timeout_s is None else min(self.timeout_s, timeout_s)
        deadline = time.monotonic() + limit
        while True:
            replies = self.poll()
            if replies:
                return replies
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply within {limit:.0f} s from nodes {sorted(set(self._pending.values()))}")
            time.sleep(self.poll_s)
