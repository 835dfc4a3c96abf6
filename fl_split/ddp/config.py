"""The data-parallel configuration schema (``fl-split ddp``)."""

from __future__ import annotations

from typing import Any

from fl_split.checkpoint import output_fields
from fl_split.config import (
    Field,
    Schema,
    at_least_one,
    build_config,
    check_data_source,
    positive,
    signed_codec_check,
)
from fl_split.config_blocks import data_fields, optimizer_fields

DDP_SCHEMA: Schema = {
    "world_size": Field(2, (int,), "processes (ranks) started on this machine", check=at_least_one),
    "steps": Field(
        120, (int,), "optimizer steps (each rank: one batch of its data shard per step)", check=at_least_one
    ),
    "log_every": Field(20, (int,), "steps per metrics row (and test evaluation)", check=at_least_one),
    "batch_size": Field(32, (int,), "batch size per rank", check=at_least_one),
    **data_fields(),
    "seed": Field(0, (int,), "seed of initialisation and batch order"),
    "codec": Field(
        "topk:keep=0.01",
        (str,),
        "codec spec for each gradient bucket (none: exact DDP bytes)",
        check=signed_codec_check("a gradient"),
    ),
    "error_feedback": Field(True, (bool,), "keep a residual per bucket"),
    "hook": Field(True, (bool,), "false: plain DDP (its own float32 all-reduce, the baseline; no bytes measured)"),
    "bucket_cap_mb": Field(
        25.0, (float,), "DDP's bucket size in MB (the hook encodes one bucket per call)", check=positive
    ),
    "optimizer": optimizer_fields(0.05),
    "timeout_s": Field(
        60.0, (float,), "process-group timeout: a rank stuck in a collective fails after this", check=positive
    ),
    **output_fields("runs/ddp", rows_every="log_every", unit="steps"),
}


def load_ddp_config(
    file: str | None = None, overrides: list[str] | tuple[str, ...] = (), values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The resolved data-parallel config."""
    return build_config(
        DDP_SCHEMA, file=file, values=values, overrides=overrides, command="ddp", validate=check_data_source
    )
