"""What the split-learning server loop needs from a message layer: :class:`Transport` and :class:`Reply`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


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
    """Everything the split-learning server loop (:class:`~fl_split.sl.loop.SplitLearningLoop`) uses.

    Bytes are measured where fields enter a message, with :func:`~fl_split.sl.wire.field_nbytes`.
    """

    def node_ids(self) -> list[int]:
        """The clients that can be sampled."""
        ...

    def send(self, node_id: int, kind: str, fields: dict[str, Any], round_: int) -> dict[str, int]:
        """Send one message; return the measured bytes per category put into it."""
        ...

    def receive(self, timeout_s: float | None = None) -> list[Reply]:
        """Block until at least one reply is in.

        ``TimeoutError`` after the configured limit, or after ``timeout_s`` seconds if that is sooner
        (the round's deadline).
        """
        ...

    def release(self, node_id: int) -> None:
        """The server loop is done with ``node_id`` for this round (finished, failed or dropped)."""
        ...

    def stats(self, round_: int) -> dict[str, Any]:
        """The transport's own counters for round ``round_``'s metrics row (``{}``: none)."""
        ...
