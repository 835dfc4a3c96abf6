"""The project's ClientApp: split learning (``train.sl_begin`` / ``train.sl_step``) and FL (``train``).

Thin glue: the node's whole state lives in ``context.state`` (one ConfigRecord), the logic in
:func:`fl_split.sl.client.client_handle`.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fl_split.fl.mods import compress_update
from fl_split.node_config import node_partition
from fl_split.sl.client import BEGIN, STEP, ClientState, client_handle
from fl_split.sl.records import RECORD, from_record, to_record
from fl_split.sl.stream_client import StreamFault, stream_round
from fl_split.sl.stream_server import ADDRESS
from simulations.fl_client_app import train as fl_train


def handle(kind: str, msg: Message, context: Context, stream_fault: StreamFault | None = None) -> Message:
    """Run one split-learning message against this node's persisted state; reply with the fields.

    An ``sl_begin`` that announces a stream (the ``stream`` transport) runs the whole round over it
    and replies with the round's last fields.
    """
    stored = from_record(context.state)
    state = ClientState.from_fields(stored) if stored else None
    pid, num = node_partition(context.node_config)
    fields = from_record(msg.content)
    if kind == BEGIN and ADDRESS in fields:
        state, reply = stream_round(fields, state, pid, num, fault=stream_fault)
    else:
        state, reply = client_handle(kind, fields, state, pid, num)
    context.state[RECORD] = to_record(state.to_fields())[RECORD]
    return Message(content=to_record(reply), reply_to=msg)


def make_client_app(mods: Sequence[Mod] = (), stream_fault: StreamFault | None = None) -> ClientApp:
    """A ClientApp answering ``train.sl_begin`` and ``train.sl_step``.

    ``mods`` wrap every message; ``stream_fault`` may break a stream mid-round (fault-injection tests).
    """
    app = ClientApp(mods=[*mods, compress_update])  # compress_update acts on FL "train" replies only

    app.train()(fl_train)  # federated learning (mode = "fl"): the whole model, an update per round

    @app.train(BEGIN)
    def sl_begin(msg: Message, context: Context) -> Message:
        return handle(BEGIN, msg, context, stream_fault)

    @app.train(STEP)
    def sl_step(msg: Message, context: Context) -> Message:
        return handle(STEP, msg, context)

    return app


#: The ClientApp ``flwr run .`` loads (``pyproject.toml``: ``[tool.flwr.app.components]``).
app = make_client_app()
