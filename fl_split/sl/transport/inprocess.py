"""The in-process transport: clients as :class:`~fl_split.sl.client.ClientState` objects in this process.

It calls :func:`~fl_split.sl.client.client_handle` directly, so the server loop runs with the same
client functions as over Flower, with no runtime in between: the exactness oracle and the fast
path. Replies come back in the order the messages were sent (a seed fixes a run).
"""

from __future__ import annotations

import logging
import traceback
from collections import deque
from collections.abc import Sequence
from typing import Any

from fl_split.sl.client import ClientState, client_handle
from fl_split.sl.transport.base import Reply
from fl_split.sl.wire import field_nbytes

log = logging.getLogger(__name__)


class InProcessTransport:
    """``num_clients`` clients; the node holding partition ``i`` is ``node_ids[i]`` (default ``i``).

    A client that raises becomes an error :class:`Reply`, as a Flower ClientApp's exception does.
    ``node_ids`` lets a test give the nodes the ids (and so the sampling and visiting order) a
    Flower run gave its nodes.
    """

    def __init__(self, num_clients: int, node_ids: Sequence[int] | None = None) -> None:
        ids = list(range(num_clients)) if node_ids is None else [int(n) for n in node_ids]
        if len(ids) != num_clients or len(set(ids)) != num_clients:
            raise ValueError(f"node_ids must be {num_clients} distinct ids (one per partition), got {ids}")
        self.num_clients = num_clients
        self.partition = {node: pid for pid, node in enumerate(ids)}
        self.states: dict[int, ClientState | None] = dict.fromkeys(ids)
        self._replies: deque[Reply] = deque()

    def node_ids(self) -> list[int]:
        """The node ids, ascending."""
        return sorted(self.partition)

    def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
        """Run the client's handler now and queue its reply."""
        sent = field_nbytes(fields)
        try:
            state, reply = client_handle(kind, fields, self.states[node_id], self.partition[node_id], self.num_clients)
        except Exception as exc:  # a failing client must not stop the run
            log.error("client %d raised on %s: %s\n%s", node_id, kind, exc, traceback.format_exc())
            self._replies.append(Reply(node_id, None, f"{type(exc).__name__}: {exc}", round=round_))
            return sent
        self.states[node_id] = state
        self._replies.append(Reply(node_id, reply, None, field_nbytes(reply), round_))
        return sent

    def release(self, node_id: int) -> None:
        """Nothing to release: a client here holds nothing between calls."""

    def receive(self, timeout_s: float | None = None) -> list[Reply]:
        """All queued replies, in the order they were produced (the clients already ran: nothing to wait for)."""
        if not self._replies:
            raise TimeoutError("no client reply is pending (the server loop waited on nothing)")
        out = list(self._replies)
        self._replies.clear()
        return out

    def stats(self, round_: int) -> dict[str, Any]:
        """No counters of its own."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Every client's :class:`ClientState` (its data cursor and last weights), for checkpoints."""
        return {str(n): None if st is None else st.to_fields() for n, st in self.states.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the same node ids)."""
        if sorted(state) != sorted(str(n) for n in self.states):
            raise ValueError(f"the checkpoint's clients {sorted(state)} are not this transport's {sorted(self.states)}")
        self.states = {
            n: None if state[str(n)] is None else ClientState.from_fields(state[str(n)]) for n in self.states
        }
