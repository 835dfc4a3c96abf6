"""How split-learning messages move: one :class:`Transport` protocol and its implementations.

- :class:`InProcessTransport` (:mod:`.inprocess`): direct calls of the client handler (the
  exactness oracle, fast sweeps);
- ``FlowerTransport`` (:mod:`.flower`): Flower messages (``grid.push_messages`` / ``pull_messages``);
- ``StreamTransport`` (:mod:`.stream`): a gRPC stream per client and round for the steps, Flower
  messages for ``sl_begin`` and the last reply.

:func:`.grid.open_transport` builds the one a config names over a ServerApp's grid. The Flower
transports are imported from their modules (they need Flower and gRPC; this package does not).
"""

from fl_split.sl.transport.base import Reply, Transport
from fl_split.sl.transport.inprocess import InProcessTransport

__all__ = ["InProcessTransport", "Reply", "Transport"]
