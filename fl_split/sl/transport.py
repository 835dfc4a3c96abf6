"""How split-learning messages move: the transport protocol and its in-process twin.

The server loop (:class:`strategies.split_learning.SplitLearningStrategy`) talks to clients only
through a :class:`Transport`. :class:`InProcessTransport` calls :func:`~fl_split.sl.client.client_handle`
directly (the exactness oracle and the fast path); the Flower transport
(:mod:`strategies.flower_transport`) pushes and pulls Flower messages. Both measure bytes the
same way: :func:`~fl_split.sl.wire.field_nbytes` of the fields put into each message.
"""

from __future__ import annotations

import logging
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from fl_split.sl.client import ClientState, client_handle
from fl_split.sl.wire import field_nbytes

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """A client's answer: its fields, or the error it raised; ``nbytes`` is measured uplink bytes per category.

    ``round`` is the round of the message it answers (a late reply from an earlier round is ignored).
    """

    node_id: int
    fields: dict[str, Any] | None
    error: str | None = None
    nbytes: dict[str, int] = field(default_factory=dict)
    round: int = 0


class Transport(Protocol):
    """What the split-learning server loop needs from a message layer."""

    def node_ids(self) -> list[int]:
        """The clients that can be sampled."""
        ...

    def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
        """Send one message; return the measured bytes per category put into it."""
        ...

    def receive(self) -> list[Reply]:
        """Block until at least one reply is in (``TimeoutError`` after the configured limit)."""
        ...

    def release(self, node_id: int) -> None:
        """The server loop is done with ``node_id`` for this round (finished, failed or dropped)."""
        ...


class InProcessTransport:
    """Clients as :class:`ClientState` objects in this process; node ``i`` holds partition ``i``.

    A client that raises becomes an error :class:`Reply`, as a Flower ClientApp's exception does.
    """

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.states: dict[int, ClientState | None] = dict.fromkeys(range(num_clients))
        self._replies: deque[Reply] = deque()

    def node_ids(self) -> list[int]:
        """Node ids ``0 .. num_clients - 1``."""
        return list(range(self.num_clients))

    def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
        """Run the client's handler now and queue its reply."""
        sent = field_nbytes(fields)
        try:
            state, reply = client_handle(kind, fields, self.states[node_id], node_id, self.num_clients)
        except Exception as exc:  # a failing client must not stop the run
            log.error("client %d raised on %s: %s\n%s", node_id, kind, exc, traceback.format_exc())
            self._replies.append(Reply(node_id, None, f"{type(exc).__name__}: {exc}", round=round_))
            return sent
        self.states[node_id] = state
        self._replies.append(Reply(node_id, reply, None, field_nbytes(reply), round_))
        return sent

    def release(self, node_id: int) -> None:
        """Nothing to release: a client here holds nothing between calls."""

    def receive(self) -> list[Reply]:
        """All queued replies, in the order they were produced."""
        if not self._replies:
            raise TimeoutError("no client reply is pending (the server loop waited on nothing)")
        out = list(self._replies)
        self._replies.clear()
        return out
