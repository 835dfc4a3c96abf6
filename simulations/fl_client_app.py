"""The federated-learning ClientApp: train the whole model locally, reply with the update (model delta).

Compression is not here: :func:`fl_split.fl.mods.compress_update` (a mod) encodes the reply's
``ArrayRecord`` on its way out, with this node's error-feedback residual from ``context.state``.
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_split.fl.client import local_train
from fl_split.fl.mods import compress_update
from fl_split.node_config import node_partition


def train(msg: Message, context: Context) -> Message:
    """One round of local training from the global weights in ``msg``."""
    config = msg.content.config_records["config"]
    fl_config = json.loads(str(config["fl-config"]))
    weights = msg.content.array_records["arrays"].to_torch_state_dict()
    pid, num = node_partition(context.node_config)
    delta, examples, loss = local_train(fl_config, weights, pid, num, int(str(config["server-round"])))
    metrics = MetricRecord({"num-examples": examples, "train-loss": loss})
    return Message(
        content=RecordDict({"arrays": ArrayRecord(torch_state_dict=delta), "metrics": metrics}), reply_to=msg
    )


def make_fl_client_app(mods: tuple = ()) -> ClientApp:
    """The ClientApp with :func:`compress_update` (innermost) and any extra ``mods`` (fault injection)."""
    app = ClientApp(mods=[*mods, compress_update])
    app.train()(train)
    return app


#: The FL-only ClientApp (``fl-split fl``); ``flwr run .`` loads :data:`simulations.client_app.app`, which
#: answers both FL and split-learning messages.
app = make_fl_client_app()
