"""The split-learning configuration schema (``fl-split sl``, the Flower app's run config)."""

from __future__ import annotations

from typing import Any

from fl_split.checkpoint import output_fields
from fl_split.config import (
    ConfigError,
    Field,
    Schema,
    at_least_one,
    build_config,
    check_data_source,
    codec_spec_check,
    fraction,
    non_negative,
    positive,
    signed_codec_check,
)
from fl_split.config_blocks import data_fields, optimizer_fields, partition_fields, ray_fields
from fl_split.data.partition import PARTITIONERS

ENGINES = ("flower", "inprocess")
TRANSPORTS = ("messages", "stream")
MODES = ("sequential", "splitfed1", "splitfed2")
#: Partition schemes (fl_split.data.partition).
PARTITIONS = PARTITIONERS
#: Downlink value meaning "the gradient only at the positions the uplink kept, no indices sent".
MASK = "mask"


_activation_gradient = signed_codec_check("an activation gradient")


def _downlink_check(value: str) -> str | None:
    return None if value == MASK else _activation_gradient(value)


def _cut_check(value: str | int) -> str | None:
    if isinstance(value, int):
        return None if value >= 1 else "an integer cut is the number of client layers, >= 1"
    return None if value in ("shallow", "medium", "deep") else "named cuts: shallow, medium, deep (or an integer)"


def _device_check(value: str) -> str | None:
    if value == "cpu" or value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return "cpu, cuda or cuda:N (the server half's torch device)"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "a TCP port in 0..65535 (0: a free one)"


SL_SCHEMA: Schema = {
    "engine": Field(
        "flower", (str,), "flower (Ray virtual clients) or inprocess (no Flower, same step functions)", ENGINES
    ),
    "mode": Field("splitfed2", (str,), "how the server loops over clients", MODES),
    "clients": Field(10, (int,), "number of clients (Flower virtual nodes / data partitions)", check=at_least_one),
    "fraction": Field(1.0, (float,), "fraction of clients sampled per round", check=fraction),
    "rounds": Field(10, (int,), "training rounds", check=at_least_one),
    "local_epochs": Field(1, (int,), "passes over its partition a client makes per round", check=at_least_one),
    "max_steps_per_round": Field(0, (int,), "cap on a client's batches per round (0: no cap)", check=non_negative),
    "batch_size": Field(32, (int,), "samples per batch (one codec call per batch)", check=at_least_one),
    "batches_per_message": Field(1, (int,), "k batches per Flower message (1: exact vanilla SL)", check=at_least_one),
    "max_update_norm": Field(
        10.0,
        (float,),
        "refuse a client half that moved more than this times the global half's norm + 1 (0: no bound)",
        check=non_negative,
    ),
    "round_timeout_s": Field(
        3600.0,
        (float,),
        "a round's deadline, seconds: clients still training then leave the round (0: no deadline)",
        check=non_negative,
    ),
    **data_fields(),
    "cut": Field("shallow", (str, int), "shallow, medium, deep, or the number of client layers", check=_cut_check),
    **partition_fields(),
    "seed": Field(0, (int,), "seed of initialisation, partitioning, batch order and sampling"),
    "uplink": Field("ms:keep=0.01,bits=2", (str,), "codec spec for the activations", check=codec_spec_check),
    "downlink": Field("none", (str,), "codec spec for the activation gradient, or 'mask'", check=_downlink_check),
    "optimizer": optimizer_fields(0.02, lr_note=" (both halves)"),
    "server_device": Field(
        "cpu", (str,), "torch device of the server half and its codec work (cpu, cuda, cuda:N)", check=_device_check
    ),
    "server_batching": Field(
        False,
        (bool,),
        "splitfed2: one server forward/backward over the batches that arrive together (changes the step order)",
    ),
    "eval_batch_size": Field(0, (int,), "test batch size (0: batch_size, so the codec sees training-sized batches)"),
    **output_fields("runs/sl"),
    "transport": Field(
        "messages",
        (str,),
        "engine=flower: how batches travel within a round; messages (a Flower message per step) or stream "
        "(one gRPC stream per client and round, for deployment)",
        TRANSPORTS,
    ),
    "stream": {
        "host": Field(
            "auto",
            (str,),
            "host the SuperNodes dial for the stream (auto: this machine's outward IP; 127.0.0.1 in simulation)",
        ),
        "bind": Field("0.0.0.0", (str,), "interface the stream server listens on"),
        "port": Field(0, (int,), "TCP port of the stream (0: a free one; fix it to open a firewall)", check=_port),
        "max_message_mb": Field(
            64.0, (float,), "largest frame accepted, MiB; a larger one is refused before decoding", check=positive
        ),
        "timeout_s": Field(
            300.0,
            (float,),
            "a client gives up waiting for a gradient (the server for its answer) after this",
            check=positive,
        ),
        "idle_timeout_s": Field(
            120.0,
            (float,),
            "the server ends a stream whose next frame does not come within this long of its last gradient",
            check=positive,
        ),
        "ssl_certfile": Field("", (str,), "TLS: the server certificate (PEM; as flower-superlink --ssl-certfile)"),
        "ssl_keyfile": Field("", (str,), "TLS: its private key (PEM; as flower-superlink --ssl-keyfile)"),
        "ssl_ca_certfile": Field(
            "", (str,), "TLS: the CA certificate sent to clients to verify the server (empty: ssl_certfile)"
        ),
        "insecure": Field(
            False, (bool,), "accept a plaintext stream on a non-loopback address (without TLS it is refused)"
        ),
    },
    "flower": {
        **ray_fields(),
        "poll_ms": Field(1.0, (float,), "ServerApp wait between pulls for replies, milliseconds", check=positive),
        "timeout_s": Field(600.0, (float,), "give up on a client reply after this many seconds", check=positive),
        "engine_wait_ms": Field(
            100.0,
            (float,),
            "simulation engine's wait between polls of the nodes' inboxes, ms (100: Flower's own; less patches "
            "flwr 1.42.0's engine for `fl-split sl`, see simulations/engine.py)",
            check=positive,
        ),
    },
}


def validate_sl(config: dict[str, Any]) -> None:
    """Cross-key checks that a single key's schema cannot express."""
    check_data_source(config)
    if config["server_batching"] and config["mode"] != "splitfed2":
        raise ConfigError(
            f"server_batching runs one server step over batches of several clients on the shared server half: "
            f"it needs mode=splitfed2 (mode is {config['mode']!r}); or set server_batching=false"
        )
    if config["transport"] == "stream" and config["engine"] != "flower":
        raise ConfigError(
            "transport=stream carries the batches of Flower clients over a gRPC stream: it needs engine=flower "
            "(the in-process engine has no transport); or set transport=messages"
        )
    stream = config["stream"]
    given = [k for k in ("ssl_certfile", "ssl_keyfile") if stream[k]]
    if len(given) == 1 or (stream["ssl_ca_certfile"] and not given):
        raise ConfigError(
            "stream TLS needs both stream.ssl_certfile and stream.ssl_keyfile (and optionally stream.ssl_ca_certfile); "
            f"got only {given or ['ssl_ca_certfile']}"
        )
    if config["downlink"] == MASK and config["uplink"].split(":")[0] in ("none", "fp16", "bf16"):
        raise ConfigError(
            f"downlink 'mask' sends the gradient at the positions a sparse uplink kept; uplink "
            f"{config['uplink']!r} keeps every position: use downlink=none (the same bytes, simpler)"
        )


def load_sl_config(
    file: str | None = None, overrides: list[str] | tuple[str, ...] = (), values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The resolved split-learning config (see :func:`fl_split.config.build_config`)."""
    return build_config(SL_SCHEMA, file=file, values=values, overrides=overrides, command="sl", validate=validate_sl)
