"""The Flower ClientApp mod that compresses a client's update on its way out.

Any ClientApp whose ``train`` reply carries its update as an ``ArrayRecord`` ``"arrays"`` (model
delta) and a ``MetricRecord`` ``"metrics"`` gets compression by adding :func:`compress_update` to
its mods: the mod reads the codec spec from the server's ``"config"`` record, encodes every
tensor (:func:`fl_split.fl.update.encode_update`) with this node's error-feedback residual from
``context.state``, stores the new residual there, and replaces the ``ArrayRecord`` by a
``ConfigRecord`` of payload bytes. ``residual-bytes`` in the metrics is what the residual costs.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fl_split.fl.update import (
    DOWN_RECORD,
    RESIDUAL_RECORD,
    UPDATE_RECORD,
    VIEW_RECORD,
    decode_update,
    encode_update,
    residuals_from_record,
    residuals_to_record,
)


def compress_update(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode a compressed global model on the way in; encode the reply's ``"arrays"`` update on the way out."""
    if msg.metadata.message_type == "train" and "config" in msg.content.config_records:
        _receive_global(msg, context)
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
    reply.content.metric_records["metrics"]["view-bytes"] = _record_bytes(context.state.config_records.get(VIEW_RECORD))
    return reply


def _record_bytes(record: ConfigRecord | None) -> int:
    """Bytes of the payloads in a stored record (0 when absent): what it costs the node to keep."""
    payloads = record.get("payloads") if record is not None else None
    return sum(len(p) for p in payloads if isinstance(p, bytes)) if isinstance(payloads, list) else 0


def _receive_global(msg: Message, context: Context) -> None:
    """Downlink compression: rebuild the global model from this node's copy plus the decoded change.

    A message with the full ``"arrays"`` (first round, or this node was out of sync) refreshes the
    copy; one with a ``DOWN_RECORD`` must name the round of the copy this node holds, else the
    node refuses it (the server then sends the full model next time).
    """
    config = msg.content.config_records["config"]
    spec = str(config.get("downlink", "none"))
    if spec == "none":
        return
    rnd = int(str(config["server-round"]))
    if DOWN_RECORD in msg.content.config_records:
        down = msg.content.config_records[DOWN_RECORD]
        stored = context.state.config_records.get(VIEW_RECORD)
        base = int(str(down["base-round"]))
        held = int(str(stored["round"])) if stored is not None else None
        if stored is None or held != base:
            raise RuntimeError(
                f"this node holds the global model of round {held}, the server sent a change from round {base}: "
                "it needs the full model (sent next time it is sampled)"
            )
        view = residuals_from_record(dict(stored))
        names, payloads = down["names"], down["payloads"]
        if not isinstance(names, list) or not isinstance(payloads, list):
            raise ValueError("the server's downlink record must hold lists of names and payloads")
        change = decode_update(
            [str(n) for n in names],
            [p if isinstance(p, bytes) else b"" for p in payloads],
            view,
            spec,
            dense_below=int(str(config["dense-below"])),
        )
        view = {k: v + change[k] for k, v in view.items()}
        msg.content = RecordDict({"arrays": ArrayRecord(torch_state_dict=view), "config": config})
    else:
        view = msg.content.array_records["arrays"].to_torch_state_dict()
    context.state[VIEW_RECORD] = ConfigRecord({**residuals_to_record(view), "round": rnd})
