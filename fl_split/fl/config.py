"""The federated-learning configuration schema (``fl-split fl``)."""

from __future__ import annotations

from typing import Any

from fl_split.checkpoint import output_fields
from fl_split.config import (
    Field,
    Schema,
    at_least_one,
    build_config,
    check_data_source,
    fraction,
    non_negative,
    positive,
    signed_codec_check,
)
from fl_split.config_blocks import data_fields, optimizer_fields, partition_fields, ray_fields

FL_SCHEMA: Schema = {
    "clients": Field(10, (int,), "number of clients (Flower virtual nodes / data partitions)", check=at_least_one),
    "fraction": Field(1.0, (float,), "fraction of clients sampled per round", check=fraction),
    "rounds": Field(30, (int,), "federated rounds", check=at_least_one),
    "local_epochs": Field(1, (int,), "passes over its partition a sampled client makes per round", check=at_least_one),
    "batch_size": Field(32, (int,), "local SGD batch size", check=at_least_one),
    **data_fields(),
    **partition_fields(),
    "seed": Field(0, (int,), "seed of initialisation, partitioning, batch order and sampling"),
    "uplink": Field(
        "ms:keep=0.01,bits=2,signed=true",
        (str,),
        "codec spec for each tensor of a client's update (model delta)",
        check=signed_codec_check("an update"),
    ),
    "downlink": Field(
        "none",
        (str,),
        "codec spec for the change of the global model sent to clients that hold the last one (none: every "
        "client gets the full float32 model); clients out of sync get the full model",
        check=signed_codec_check("a model change"),
    ),
    "error_feedback": Field(True, (bool,), "keep each client's compression residual (per tensor) in its state"),
    "dense_below": Field(
        1024,
        (int,),
        "tensors with fewer elements are sent uncompressed (float32): biases, small heads",
        check=non_negative,
    ),
    "max_update_norm": Field(
        10.0,
        (float,),
        "refuse an update larger than this times the global model's norm + 1 (0: no bound)",
        check=non_negative,
    ),
    "server_lr": Field(1.0, (float,), "the server's step on the averaged update (1: FedAvg)", check=positive),
    "optimizer": optimizer_fields(0.05, "local SGD", momentum_note=" (buffers start at zero each round)"),
    "eval_batch_size": Field(512, (int,), "test batch size of the server's evaluation (0: 512)", check=non_negative),
    **output_fields("runs/fl"),
    "flower": {
        **ray_fields(),
        "timeout_s": Field(
            600.0, (float,), "give up on the replies of a round after this many seconds", check=positive
        ),
        "wait_for_nodes_s": Field(
            300.0,
            (float,),
            "at the start, wait this long for `clients` nodes to connect, then stop with an error",
            check=positive,
        ),
    },
}


def validate_fl(config: dict[str, Any]) -> None:
    """Cross-key checks."""
    check_data_source(config)


def load_fl_config(
    file: str | None = None, overrides: list[str] | tuple[str, ...] = (), values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The resolved federated-learning config (see :func:`fl_split.config.build_config`)."""
    return build_config(FL_SCHEMA, file=file, values=values, overrides=overrides, command="fl", validate=validate_fl)
