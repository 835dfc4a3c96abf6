"""The split-learning server strategy: the Flower-facing face of :class:`~fl_split.sl.loop.SplitLearningLoop`.

The round loop, the modes (:mod:`fl_split.sl.protocol`) and the step maths live in
:mod:`fl_split.sl`; this class adds what a ServerApp needs: :meth:`SplitLearningStrategy.start`
takes the grid Flower gives ``main(grid, context)`` (or any transport) and opens the transport
the config names on it, as Flower's own strategies' ``start(grid, ...)`` do.

``sequential``
    Vanilla split learning: clients take turns in a seeded order drawn each round; each starts
    from the client half and momentum the previous one returned; one server half.
``splitfed1``
    Clients in parallel, a server-half copy each; both halves FedAvg'd by samples each round.
``splitfed2``
    Clients in parallel, one server half stepped in arrival order; client halves FedAvg'd.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp import Grid

from fl_split.sl.loop import SplitLearningLoop, TrainingFailed, describe, server_device
from fl_split.sl.transport import Transport
from fl_split.sl.transport.grid import open_transport

__all__ = ["SplitLearningStrategy", "TrainingFailed", "describe", "server_device"]


class SplitLearningStrategy(SplitLearningLoop):
    """Split learning over Flower (see :class:`~fl_split.sl.loop.SplitLearningLoop` for the parameters)."""

    def start(self, transport: Transport | Grid, *, local: bool = False) -> list[dict[str, Any]]:
        """Run every round; return the per-round metrics rows.

        Parameters
        ----------
        transport:
            A :class:`~fl_split.sl.transport.Transport`, or a ServerApp's ``Grid`` (the transport the
            config's ``transport`` key names is opened on it and closed afterwards).
        local:
            With a grid: everything runs on this machine (simulation), so an ``auto`` stream host is
            127.0.0.1.
        """
        if not isinstance(transport, Grid):
            return super().start(transport)
        with open_transport(transport, self.config, local=local) as opened:
            return super().start(opened)
