"""The ClientApp ``flwr run .`` loads (``pyproject.toml``: ``[tool.flwr.app.components]``).

It answers split learning (``train.sl_begin`` / ``train.sl_step``) and federated learning
(``train``); it is built, like every ClientApp of the project, by
:func:`simulations.apps.build_client_app`.
"""

from __future__ import annotations

from fl_split.node_config import node_partition
from simulations.apps import build_client_app, sl_handle

#: The builder under its earlier name (tests and benchmarks pass ``mods`` / ``stream_fault``).
make_client_app = build_client_app
#: The split-learning handler under its earlier name.
handle = sl_handle

__all__ = ["app", "handle", "make_client_app", "node_partition"]

app = build_client_app()
