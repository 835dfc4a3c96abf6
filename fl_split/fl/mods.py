"""The Flower ClientApp mod that compresses a client's update on its way out.

Any ClientApp whose ``train`` reply carries its update as an ``ArrayRecord`` ``"arrays"`` (model
delta) and a ``MetricRecord`` ``"metrics"`` gets compression by adding :func:`compress_update` to
its mods: the mod reads the codec spec from the server's ``"config"`` record, encodes every
tensor (:func:`fl_split.fl.update.encode_update`) with this node's error-feedback residual from
``context.state``, stores the new residual there, and replaces the ``ArrayRecord`` by a
``ConfigRecord`` of payload bytes. ``residual-bytes`` in the metrics is what the residual costs.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fl_split.fl.update import (
    RESIDUAL_RECORD,
    UPDATE_RECORD,
    encode_update,
    residuals_from_record,
    residuals_to_record,
)


def compress_update(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Encode the reply's ``"arrays"`` update with the configured uplink codec (a Flower mod)."""
    reply = call_next(msg, context)
    if msg.metadata.message_type != "train" or reply.has_error() or "arrays" not in reply.content.array_records:
        return reply
    config = msg.content.config_records["config"]
    arrays: ArrayRecord = reply.content.array_records["arrays"]
    deltas = arrays.to_torch_state_dict()
    ef = bool(config["error-feedback"])
    residuals = None
    if ef:
        stored = context.state.config_records.get(RESIDUAL_RECORD)
        residuals = residuals_from_record(dict(stored)) if stored is not None else {}
    names, payloads, residuals = encode_update(
        deltas, str(config["uplink"]), dense_below=int(str(config["dense-below"])), residuals=residuals
    )
    residual_bytes = 0
    if residuals is not None:
        record = residuals_to_record(residuals)
        residual_bytes = sum(len(p) for p in record["payloads"])
        context.state[RESIDUAL_RECORD] = ConfigRecord(record)
    del reply.content.array_records["arrays"]
    reply.content[UPDATE_RECORD] = ConfigRecord({"names": names, "payloads": payloads})
    reply.content.metric_records["metrics"]["residual-bytes"] = residual_bytes
    return reply
