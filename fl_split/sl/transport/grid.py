"""The transport a split-learning config names, over a ServerApp's grid."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flwr.serverapp import Grid

from fl_split.sl.config import SLConfig
from fl_split.sl.transport.base import Transport
from fl_split.sl.transport.flower import FlowerTransport
from fl_split.sl.transport.stream import StreamTransport


@contextmanager
def open_transport(grid: Grid, config: SLConfig, *, local: bool = False) -> Iterator[Transport]:
    """The transport ``config.transport`` names over ``grid``; a stream server is stopped on exit.

    ``local``: everything runs on this machine (simulation), so an ``auto`` stream host is 127.0.0.1.
    """
    flower = FlowerTransport.from_config(grid, config)
    if config.transport == "messages":
        yield flower
        return
    with StreamTransport.from_config(flower, config, local=local) as stream:
        yield stream
